package portlock

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestMain(m *testing.M) {
	if n := os.Getenv("PORTLOCK_CHILD_RESERVE"); n != "" {
		child(n)
		return
	}
	testenv.Main(m)
}

// child reserves n ports, prints them and holds them until stdin closes.
func child(n string) {
	count, _ := strconv.Atoi(n)
	var leases []*Lease
	for range count {
		l, err := Reserve()
		if err != nil {
			fmt.Println("error", err)
			os.Exit(1)
		}
		leases = append(leases, l)
		fmt.Println(l.Port)
	}
	fmt.Println("held")
	os.Stdin.Read(make([]byte, 1))
	for _, l := range leases {
		l.Release()
	}
}

// reserveN reserves n ports, released when the test ends.
func reserveN(t *testing.T, n int) map[int]bool {
	t.Helper()
	ports := map[int]bool{}
	for range n {
		l, err := Reserve()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(l.Release)
		if ports[l.Port] {
			t.Fatalf("port %d reserved twice", l.Port)
		}
		if l.Port < firstPort || l.Port > lastPort {
			t.Fatalf("port %d outside %d-%d", l.Port, firstPort, lastPort)
		}
		ports[l.Port] = true
	}
	return ports
}

// Another process holding 500 leases and this one taking 500 more never
// share a port (unlocked, about 20 would be shared by chance).
func TestLeasesAcrossProcesses(t *testing.T) {
	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), "PORTLOCK_CHILD_RESERVE=500")
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		stdin.Close()
		if err := cmd.Wait(); err != nil {
			t.Errorf("child: %v", err)
		}
	}()
	theirs := map[int]bool{}
	sc := bufio.NewScanner(out)
	for sc.Scan() && sc.Text() != "held" {
		p, err := strconv.Atoi(sc.Text())
		if err != nil {
			t.Fatalf("child: %q", sc.Text())
		}
		theirs[p] = true
	}
	if len(theirs) != 500 {
		t.Fatalf("child reserved %d ports, want 500", len(theirs))
	}
	for p := range reserveN(t, 500) {
		if theirs[p] {
			t.Errorf("port %d held by both processes", p)
		}
	}
}

// A held port is not handed out; once released it can be, and its lock
// file is gone.
func TestReleaseFreesPort(t *testing.T) {
	l, err := Reserve()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(Dir(), strconv.Itoa(l.Port))
	if f, err := held(path); err != nil || f != nil {
		t.Fatalf("locking a leased port's file: %v, %v; want held by the lease", f, err)
	}
	l.Release()
	l.Release()
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("lock file after Release: %v", err)
	}
	f, err := held(path)
	if err != nil || f == nil {
		t.Fatalf("locking a released port's file: %v, %v", f, err)
	}
	os.Remove(path)
	f.Close()
}

// A port something listens on without a lease is not handed out.
func TestListeningPortSkipped(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	if free(ln.Addr().(*net.TCPAddr).Port) {
		t.Error("a port with a listener counts as free")
	}
	l, err := Reserve()
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release()
	pc, err := net.ListenPacket("udp", l.Addr())
	if err != nil {
		t.Fatalf("a leased port is not free for UDP: %v", err)
	}
	pc.Close()
	if !free(l.Port) {
		t.Error("a leased port nobody listens on counts as taken")
	}
}
