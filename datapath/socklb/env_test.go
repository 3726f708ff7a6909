package socklb

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath"
	"github.com/clustermesh/clustermesh/datapath/internal/dptest"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// The socket load balancer's test environment: a cgroup v2 made by the test
// with the programs attached, a client network namespace, and one network
// namespace per "cluster" joined to the client's by a veth pair:
//
//	client ns (cmt-<id>-cli)             cluster N ns (cmt-<id>-cN)
//	  cN  10.200.N.1/24  fd00:200:N::1/64 ── eth0 10.200.N.2../24  fd00:200:N::2../64
//	                                            default via 10.200.N.1, fd00:200:N::1
//
// Backend servers run in this process, their sockets made in a cluster's
// namespace (a locked thread switched with setns); the client runs in a
// child process, the test binary re-executed with TestHelperClient, started
// straight into the cgroup (clone3 CLONE_INTO_CGROUP) and switching into
// the client namespace itself. Everything is removed in t.Cleanup.

// helperEnv carries the client's request (JSON) to the re-executed binary.
const helperEnv = "CLUSTERMESH_SOCKLB_CLIENT"

// resultPrefix marks the child's answer on its stdout; holdPrefix the
// answers of a "hold" client.
const (
	resultPrefix = "SOCKLB-RESULT "
	holdPrefix   = "SOCKLB-HOLD "
)

type lbEnv struct {
	t        *testing.T
	id       string
	clientNS string
	cgroup   string
	maps     *datapath.Maps
	lb       *LB
}

// newTestCgroup creates a cgroup under the cgroup v2 mount, removed at
// cleanup (once the processes in it are gone).
func newTestCgroup(t testing.TB) string {
	t.Helper()
	root, err := Cgroup2Mount()
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(root, "cm-test-"+dptest.RandomID(t))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatalf("create test cgroup: %v", err)
	}
	t.Cleanup(func() {
		// The cgroup is busy until its last process is reaped.
		var err error
		testenv.WaitFor(t, 10*time.Second, "test cgroup "+dir+" removable", func() bool {
			err = os.Remove(dir)
			return !errors.Is(err, syscall.EBUSY)
		})
		if err != nil && !errors.Is(err, os.ErrNotExist) {
			t.Errorf("remove test cgroup %s: %v", dir, err)
		}
	})
	return dir
}

// clusterAddr4/6 is the address of host h (2, 3, ...) of cluster n's
// namespace; h = 1 is the client's end of the veth.
func clusterAddr4(n, h int) netip.Addr { return netip.AddrFrom4([4]byte{10, 200, byte(n), byte(h)}) }
func clusterAddr6(n, h int) netip.Addr {
	return netip.MustParseAddr(fmt.Sprintf("fd00:200:%d::%d", n, h))
}

// newLBEnv builds the environment with clusters cluster namespaces holding
// hosts addresses each (10.200.N.2 .. 10.200.N.(1+hosts)), maps, a cgroup
// and a SockLB attached to it.
func newLBEnv(t *testing.T, clusters, hosts int) *lbEnv {
	t.Helper()
	testenv.RequireRoot(t)
	e := &lbEnv{t: t, id: dptest.RandomID(t)}
	e.maps = dptest.OpenMaps(t, dptest.SmallConfig(""), RemovePins)
	e.cgroup = newTestCgroup(t)
	lb, err := Attach(e.maps, e.cgroup, Config{})
	if err != nil {
		t.Fatalf("Attach: %v", err)
	}
	e.lb = lb
	t.Cleanup(func() {
		if err := lb.Close(); err != nil {
			t.Errorf("SockLB.Close: %v", err)
		}
	})

	e.clientNS = "cmt-" + e.id + "-cli"
	dptest.NewNetns(t, e.clientNS)
	for n := 1; n <= clusters; n++ {
		ns := e.clusterNS(n)
		dptest.NewNetns(t, ns)
		veth := fmt.Sprintf("c%d", n)
		dptest.Run(t, "ip", "-n", e.clientNS, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
		dptest.Run(t, "ip", "-n", e.clientNS, "addr", "add", clusterAddr4(n, 1).String()+"/24", "dev", veth)
		dptest.Run(t, "ip", "-n", e.clientNS, "addr", "add", clusterAddr6(n, 1).String()+"/64", "dev", veth, "nodad")
		for h := 2; h < 2+hosts; h++ {
			dptest.Run(t, "ip", "-n", ns, "addr", "add", clusterAddr4(n, h).String()+"/24", "dev", "eth0")
			dptest.Run(t, "ip", "-n", ns, "addr", "add", clusterAddr6(n, h).String()+"/64", "dev", "eth0", "nodad")
		}
		dptest.Run(t, "ip", "-n", ns, "link", "set", "eth0", "up")
		dptest.Run(t, "ip", "-n", e.clientNS, "link", "set", veth, "up")
		// Replies to any of the client's addresses go back through the veth
		// (a UDP socket keeps the source address of its first connect).
		dptest.Run(t, "ip", "-n", ns, "route", "add", "default", "via", clusterAddr4(n, 1).String())
		dptest.Run(t, "ip", "-n", ns, "-6", "route", "add", "default", "via", clusterAddr6(n, 1).String())
		testenv.WaitFor(t, 10*time.Second, veth+" up", func() bool {
			out, err := exec.Command("ip", "-n", e.clientNS, "-o", "link", "show", "dev", veth).Output()
			return err == nil && bytes.Contains(out, []byte("LOWER_UP")) && bytes.Contains(out, []byte("state UP"))
		})
	}
	return e
}

func (e *lbEnv) clusterNS(n int) string { return fmt.Sprintf("cmt-%s-c%d", e.id, n) }

// clientReq is what the child client does.
type clientReq struct {
	NetNS string // network namespace to enter (name under /run/netns)
	// Op: "tcp" (N connections: connect, getpeername, read the server's
	// name), "udp" (one unconnected socket: N times sendto and recvfrom),
	// "udp-connected" (N sockets: connect, getpeername, send, receive),
	// "tcp-mapped" (N AF_INET6 sockets dialling Addr's v4-mapped form).
	// "udp-reconnect" (N sockets: connect to Addr, getpeername, connect
	// the same socket to Addr2, getpeername, send, receive), "hold"
	// (one TCP connection to Addr, held until stdin closes; every line on
	// stdin asks for getpeername, answered on stdout after holdPrefix).
	// "tcp" with Addr2 binds each socket to Addr2 first (host:0), and
	// records the local address in Locals.
	Op    string
	Addr  string // host:port
	Addr2 string
	N     int
}

// clientResp is what it saw. Counts are keyed by the server's name, by the
// peer address (getpeername, or recvfrom's source) and by error.
type clientResp struct {
	Replies map[string]int
	Peers   map[string]int
	Errors  map[string]int
	Locals  map[string]int
}

// runClient runs req in a child process inside the test's cgroup.
func (e *lbEnv) runClient(req clientReq) clientResp {
	e.t.Helper()
	if req.NetNS == "" {
		req.NetNS = e.clientNS
	}
	return runClientIn(e.t, e.cgroup, req)
}

func runClientIn(t testing.TB, cgroup string, req clientReq) clientResp {
	t.Helper()
	reqJSON, err := json.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperClient$", "-test.count=1", "-test.timeout=2m")
	// A -race binary sleeps 1 s at exit unless told otherwise.
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(reqJSON), "GORACE="+gorace)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("client %s: %v\nstdout:\n%s\nstderr:\n%s", reqJSON, err, stdout.Bytes(), stderr.Bytes())
	}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), resultPrefix); ok {
			var resp clientResp
			if err := json.Unmarshal([]byte(rest), &resp); err != nil {
				t.Fatalf("client answer %q: %v", rest, err)
			}
			return resp
		}
	}
	t.Fatalf("client %s gave no answer:\n%s\n%s", reqJSON, stdout.Bytes(), stderr.Bytes())
	return clientResp{}
}

// TestHelperClient is the child client (skipped unless re-executed by
// runClient).
func TestHelperClient(t *testing.T) {
	raw := os.Getenv(helperEnv)
	if raw == "" {
		t.Skip("the socket load balancer tests' client; runs only when re-executed by them")
	}
	var req clientReq
	if err := json.Unmarshal([]byte(raw), &req); err != nil {
		t.Fatal(err)
	}
	// The whole client runs on this thread, inside the client namespace.
	runtime.LockOSThread()
	ns, err := os.Open("/run/netns/" + req.NetNS)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Setns(int(ns.Fd()), unix.CLONE_NEWNET); err != nil {
		t.Fatalf("setns %s: %v", req.NetNS, err)
	}
	ns.Close()
	resp := clientResp{Replies: map[string]int{}, Peers: map[string]int{}, Errors: map[string]int{}, Locals: map[string]int{}}
	switch req.Op {
	case "tcp":
		clientTCP(req, &resp)
	case "udp":
		clientUDP(req, &resp)
	case "udp-connected":
		clientUDPConnected(req, &resp)
	case "tcp-mapped":
		clientTCPMapped(req, &resp)
	case "udp-reconnect":
		clientUDPReconnect(req, &resp)
	case "hold":
		clientHold(t, req)
	default:
		t.Fatalf("unknown op %q", req.Op)
	}
	out, err := json.Marshal(resp)
	if err != nil {
		t.Fatal(err)
	}
	fmt.Println(resultPrefix + string(out))
}

// errName names an error by its errno when it has one.
func errName(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		if name := unix.ErrnoName(errno); name != "" {
			return name
		}
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return err.Error()
}

// peerName returns getpeername of c's socket.
func peerName(c syscall.Conn) (string, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return "", err
	}
	var sa unix.Sockaddr
	var gerr error
	if err := rc.Control(func(fd uintptr) { sa, gerr = unix.Getpeername(int(fd)) }); err != nil {
		return "", err
	}
	if gerr != nil {
		return "", gerr
	}
	return sockaddrString(sa), nil
}

func sockaddrString(sa unix.Sockaddr) string {
	switch sa := sa.(type) {
	case *unix.SockaddrInet4:
		return netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)).String()
	case *unix.SockaddrInet6:
		return netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)).String()
	}
	return fmt.Sprintf("%T", sa)
}

const clientTimeout = 3 * time.Second

func clientTCP(req clientReq, resp *clientResp) {
	d := net.Dialer{Timeout: clientTimeout}
	if req.Addr2 != "" {
		local, err := net.ResolveTCPAddr("tcp", req.Addr2)
		if err != nil {
			resp.Errors[err.Error()]++
			return
		}
		d.LocalAddr = local
	}
	for range req.N {
		c, err := d.Dial("tcp", req.Addr)
		if err != nil {
			resp.Errors[errName(err)]++
			continue
		}
		if req.Addr2 != "" {
			resp.Locals[c.LocalAddr().String()]++
		}
		peer, err := peerName(c.(*net.TCPConn))
		if err != nil {
			peer = "getpeername: " + errName(err)
		}
		resp.Peers[peer]++
		c.SetDeadline(time.Now().Add(clientTimeout))
		b, err := io.ReadAll(c)
		c.Close()
		if err != nil {
			resp.Errors["read: "+errName(err)]++
			continue
		}
		resp.Replies[strings.TrimSpace(string(b))]++
	}
}

func clientUDP(req clientReq, resp *clientResp) {
	dst, err := net.ResolveUDPAddr("udp", req.Addr)
	if err != nil {
		resp.Errors[err.Error()]++
		return
	}
	network := "udp4"
	if dst.IP.To4() == nil {
		network = "udp6"
	}
	pc, err := net.ListenUDP(network, nil)
	if err != nil {
		resp.Errors["listen: "+errName(err)]++
		return
	}
	defer pc.Close()
	buf := make([]byte, 1500)
	for range req.N {
		if _, err := pc.WriteTo([]byte("ping"), dst); err != nil {
			resp.Errors[errName(err)]++
			continue
		}
		pc.SetReadDeadline(time.Now().Add(clientTimeout))
		n, from, err := pc.ReadFromUDPAddrPort(buf)
		if err != nil {
			resp.Errors["read: "+errName(err)]++
			continue
		}
		resp.Peers[netip.AddrPortFrom(from.Addr().Unmap(), from.Port()).String()]++
		resp.Replies[string(buf[:n])]++
	}
}

func clientUDPConnected(req clientReq, resp *clientResp) {
	buf := make([]byte, 1500)
	for range req.N {
		c, err := net.Dial("udp", req.Addr)
		if err != nil {
			resp.Errors[errName(err)]++
			continue
		}
		peer, err := peerName(c.(*net.UDPConn))
		if err != nil {
			peer = "getpeername: " + errName(err)
		}
		resp.Peers[peer]++
		c.SetDeadline(time.Now().Add(clientTimeout))
		if _, err := c.Write([]byte("ping")); err != nil {
			resp.Errors["write: "+errName(err)]++
			c.Close()
			continue
		}
		n, err := c.Read(buf)
		c.Close()
		if err != nil {
			resp.Errors["read: "+errName(err)]++
			continue
		}
		resp.Replies[string(buf[:n])]++
	}
}

// clientTCPMapped dials with raw AF_INET6 sockets (IPV6_V6ONLY off) to the
// v4-mapped form of Addr, which Go's net package would dial with AF_INET.
func clientTCPMapped(req clientReq, resp *clientResp) {
	ap := netip.MustParseAddrPort(req.Addr)
	sa := &unix.SockaddrInet6{Port: int(ap.Port()), Addr: netip.AddrFrom16(ap.Addr().As16()).As16()}
	buf := make([]byte, 64)
	for range req.N {
		fd, err := unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			resp.Errors["socket: "+errName(err)]++
			continue
		}
		func() {
			defer unix.Close(fd)
			if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 0); err != nil {
				resp.Errors["setsockopt: "+errName(err)]++
				return
			}
			tv := unix.NsecToTimeval(clientTimeout.Nanoseconds())
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
			if err := connectFD(fd, sa); err != nil {
				resp.Errors[errName(err)]++
				return
			}
			peer, err := unix.Getpeername(fd)
			if err != nil {
				resp.Peers["getpeername: "+errName(err)]++
			} else {
				resp.Peers[sockaddrString(peer)]++
			}
			var got []byte
			for {
				n, err := retryEINTR(func() (int, error) { return unix.Read(fd, buf) })
				if n > 0 {
					got = append(got, buf[:n]...)
				}
				if err != nil {
					resp.Errors["read: "+errName(err)]++
					return
				}
				if n == 0 {
					break
				}
			}
			resp.Replies[strings.TrimSpace(string(got))]++
		}()
	}
}

func clientUDPReconnect(req clientReq, resp *clientResp) {
	first, err := netip.ParseAddrPort(req.Addr)
	if err != nil {
		resp.Errors[err.Error()]++
		return
	}
	second, err := netip.ParseAddrPort(req.Addr2)
	if err != nil {
		resp.Errors[err.Error()]++
		return
	}
	sa1, family := sockaddr(first)
	sa2, _ := sockaddr(second)
	buf := make([]byte, 64)
	for range req.N {
		fd, err := unix.Socket(family, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			resp.Errors["socket: "+errName(err)]++
			continue
		}
		func() {
			defer unix.Close(fd)
			tv := unix.NsecToTimeval(clientTimeout.Nanoseconds())
			unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
			for i, sa := range []unix.Sockaddr{sa1, sa2} {
				if err := unix.Connect(fd, sa); err != nil {
					resp.Errors[fmt.Sprintf("connect %d: %s", i+1, errName(err))]++
					return
				}
				peer, err := unix.Getpeername(fd)
				if err != nil {
					resp.Peers["getpeername: "+errName(err)]++
					return
				}
				resp.Peers[fmt.Sprintf("%d %s", i+1, sockaddrString(peer))]++
			}
			if _, err := unix.Write(fd, []byte("ping")); err != nil {
				resp.Errors["write: "+errName(err)]++
				return
			}
			var from unix.Sockaddr
			n, err := retryEINTR(func() (n int, err error) {
				n, from, err = unix.Recvfrom(fd, buf, 0)
				return n, err
			})
			if err != nil {
				resp.Errors["read: "+errName(err)]++
				return
			}
			resp.Replies[string(buf[:n])]++
			if from != nil {
				resp.Peers["from "+sockaddrString(from)]++
			}
		}()
	}
}

// connectFD connects fd to sa. On a socket with SO_SNDTIMEO a connect
// interrupted by a signal (the Go runtime's preemption) is not restarted:
// it fails with EINTR while the kernel goes on connecting, so wait for
// that to finish.
func connectFD(fd int, sa unix.Sockaddr) error {
	if err := unix.Connect(fd, sa); err != unix.EINTR {
		return err
	}
	pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}}
	for {
		n, err := unix.Poll(pfd, int(clientTimeout.Milliseconds()))
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return unix.ETIMEDOUT
		}
		break
	}
	soErr, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_ERROR)
	if err != nil {
		return err
	}
	if soErr != 0 {
		return unix.Errno(soErr)
	}
	return nil
}

// retryEINTR calls fn again while it fails with EINTR: on a socket with
// SO_RCVTIMEO a read interrupted by a signal is not restarted.
func retryEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if err != unix.EINTR {
			return n, err
		}
	}
}

// clientHold holds one TCP connection and answers getpeername requests.
func clientHold(t *testing.T, req clientReq) {
	c, err := net.DialTimeout("tcp", req.Addr, clientTimeout)
	if err != nil {
		fmt.Printf("%serror %s\n", holdPrefix, errName(err))
		return
	}
	defer c.Close()
	sc := bufio.NewScanner(os.Stdin)
	for {
		peer, err := peerName(c.(*net.TCPConn))
		if err != nil {
			peer = "getpeername: " + errName(err)
		}
		fmt.Printf("%s%s\n", holdPrefix, peer)
		if !sc.Scan() {
			return
		}
	}
}

// holder is the parent's end of a "hold" client.
type holder struct {
	t     *testing.T
	stdin io.WriteCloser
	lines chan string
	done  chan error
}

// startHolder starts a "hold" client in the test's cgroup and returns once
// it has connected (its first answer is the peer right after connect).
func (e *lbEnv) startHolder(addr string) (*holder, string) {
	t := e.t
	t.Helper()
	reqJSON, err := json.Marshal(clientReq{NetNS: e.clientNS, Op: "hold", Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	cg, err := os.Open(e.cgroup)
	if err != nil {
		t.Fatal(err)
	}
	defer cg.Close()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperClient$", "-test.count=1", "-test.timeout=2m")
	gorace := strings.TrimSpace(os.Getenv("GORACE") + " atexit_sleep_ms=0")
	cmd.Env = append(os.Environ(), helperEnv+"="+string(reqJSON), "GORACE="+gorace)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(cg.Fd())}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	h := &holder{t: t, stdin: stdin, lines: make(chan string, 16), done: make(chan error, 1)}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			if rest, ok := strings.CutPrefix(sc.Text(), holdPrefix); ok {
				h.lines <- rest
			}
		}
		close(h.lines)
		h.done <- cmd.Wait()
	}()
	t.Cleanup(func() {
		stdin.Close()
		select {
		case <-h.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-h.done
		}
		if t.Failed() {
			t.Logf("holder stderr:\n%s", stderr.Bytes())
		}
	})
	return h, h.next()
}

// next returns the holder's next answer.
func (h *holder) next() string {
	h.t.Helper()
	select {
	case l, ok := <-h.lines:
		if !ok {
			h.t.Fatalf("the holding client exited")
		}
		return l
	case <-time.After(10 * time.Second):
		h.t.Fatalf("no answer from the holding client within 10s")
	}
	return ""
}

// peer asks the holder for its socket's getpeername.
func (h *holder) peer() string {
	h.t.Helper()
	if _, err := io.WriteString(h.stdin, "peer\n"); err != nil {
		h.t.Fatal(err)
	}
	return h.next()
}
