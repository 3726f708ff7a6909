package wireguard

import (
	"bufio"
	"errors"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestUserspaceCloseWhileClientsConnect: clients ask a userspace device for
// its configuration over its UAPI socket, as wgctrl does, connection after
// connection, while the device closes. Every connection the device
// accepted is answered or closed by it (none left open: a client would
// wait for its answer until its deadline), and the socket goes with it.
func TestUserspaceCloseWhileClientsConnect(t *testing.T) {
	testenv.RequireRoot(t)
	n := newNS(t)
	ns, err := openNS(n.path)
	if err != nil {
		t.Fatal(err)
	}
	defer ns.close()
	for range 20 {
		name := uniqueDevName()
		u, err := openUserspace(name, 1420, ns, testLogger(t, "n"))
		if err != nil {
			t.Fatal(err)
		}
		var answered atomic.Int64
		var wg sync.WaitGroup
		errs := make(chan error, 4)
		for range 4 {
			wg.Go(func() {
				for {
					err := askConfig(uapiSocket(name), &answered)
					if errors.Is(err, errNoSocket) {
						return
					}
					if err != nil {
						errs <- err
						return
					}
				}
			})
		}
		testenv.WaitFor(t, 10*time.Second, "clients answered", func() bool { return answered.Load() >= 8 })
		u.close()
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Errorf("%s: %v", name, err)
		}
		if _, err := os.Stat(uapiSocket(name)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s: socket after close: %v", name, err)
		}
	}
}

var errNoSocket = errors.New("no socket")

// askConfig connects to the UAPI socket, asks get=1 and reads the answer
// to its errno line; a connection closed by the device (it is closing) is
// fine, one left unanswered for 10s is not.
func askConfig(path string, answered *atomic.Int64) error {
	c, err := net.Dial("unix", path)
	if err != nil {
		return errNoSocket
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := c.Write([]byte("get=1\n\n")); err != nil {
		return nil // closed by the device
	}
	sc := bufio.NewScanner(c)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "errno=") {
			answered.Add(1)
			return nil
		}
	}
	var ne net.Error
	if errors.As(sc.Err(), &ne) && ne.Timeout() {
		return errors.New("a connection the device accepted was neither answered nor closed")
	}
	return nil
}
