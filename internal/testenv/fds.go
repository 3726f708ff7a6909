package testenv

import (
	"fmt"
	"maps"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"
)

// openFDs returns the process's open file descriptors and what each refers
// to. Before the first snapshot it makes the runtime open its network poller
// (an epoll and an eventfd, kept for the life of the process), so that a
// test's first socket or pipe does not count it as a leak.
func openFDs() map[int]string {
	if r, w, err := os.Pipe(); err == nil {
		r.Close()
		w.Close()
	}
	return listFDs()
}

func listFDs() map[int]string {
	dir := "/proc/self/fd"
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil // not Linux: nothing to compare
	}
	fds := map[int]string{}
	for _, e := range entries {
		fd, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		target, err := os.Readlink(dir + "/" + e.Name())
		if err != nil {
			continue // closed meanwhile: the directory's own descriptor
		}
		fds[fd] = target
	}
	return fds
}

// leakedFDs returns the descriptors open now that were not before the tests
// (or now refer to something else), waiting until deadline for the ones that
// are being closed.
func leakedFDs(before map[int]string, deadline time.Time) []string {
	if before == nil {
		return nil
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var leaked []string
		fds := listFDs()
		for _, fd := range slices.Sorted(maps.Keys(fds)) {
			if target, ok := before[fd]; !ok || target != fds[fd] {
				leaked = append(leaked, fmt.Sprintf("  fd %d → %s", fd, describeFD(fds[fd])))
			}
		}
		if len(leaked) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			head := fmt.Sprintf("file descriptors opened by the tests and never closed (%d):", len(leaked))
			return []string{strings.Join(append([]string{head}, leaked...), "\n")}
		}
		<-tick.C
	}
}

// describeFD adds to a socket's target ("socket:[1234]") its protocol and
// addresses, as /proc/self/net lists them.
func describeFD(target string) string {
	inode, ok := strings.CutPrefix(target, "socket:[")
	if !ok {
		return target
	}
	inode = strings.TrimSuffix(inode, "]")
	for _, proto := range []string{"tcp", "tcp6", "udp", "udp6", "unix"} {
		data, err := os.ReadFile("/proc/self/net/" + proto)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(data), "\n")[1:] {
			f := strings.Fields(line)
			switch {
			case proto == "unix" && len(f) >= 7 && f[6] == inode:
				path := ""
				if len(f) >= 8 {
					path = " " + f[7]
				}
				return target + " (unix" + path + ")"
			case proto != "unix" && len(f) >= 10 && f[9] == inode:
				return fmt.Sprintf("%s (%s %s → %s)", target, proto, hexAddr(f[1]), hexAddr(f[2]))
			}
		}
	}
	return target
}

// hexAddr turns /proc/net/tcp's "0100007F:1F90" into "127.0.0.1:8080" (IPv4;
// IPv6 addresses stay in their hex form, with the port decoded).
func hexAddr(s string) string {
	addr, port, ok := strings.Cut(s, ":")
	p, err := strconv.ParseUint(port, 16, 16)
	if !ok || err != nil {
		return s
	}
	if len(addr) == 8 {
		if v, err := strconv.ParseUint(addr, 16, 32); err == nil {
			// Little-endian: the first octet is the lowest byte.
			return fmt.Sprintf("%d.%d.%d.%d:%d", v&0xff, v>>8&0xff, v>>16&0xff, v>>24, p)
		}
	}
	return fmt.Sprintf("[%s]:%d", addr, p)
}
