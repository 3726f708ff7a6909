package wireguard

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/tun"

	"github.com/clustermesh/clustermesh/internal/unixsock"
)

// uapiDir is where wireguard-go (and wgctrl) keep the control sockets. It is
// a file system path, so it is shared by every network namespace.
const uapiDir = "/var/run/wireguard"

func uapiSocket(name string) string { return filepath.Join(uapiDir, name+".sock") }

// userspaceDevice is wireguard-go on a TUN device, configured by wgctrl
// through its UAPI socket exactly like a kernel device.
type userspaceDevice struct {
	dev  *device.Device
	uapi net.Listener   // the UAPI socket, accepted on by serve alone
	wg   sync.WaitGroup // accept loop and UAPI handlers

	mu    sync.Mutex
	conns map[net.Conn]struct{} // guarded by mu; nil once closing
}

// checkSocketFree fails when a live process serves the UAPI socket of name:
// another device of that name, in this network namespace or any other.
func checkSocketFree(name string) error {
	c, err := net.DialTimeout("unix", uapiSocket(name), time.Second)
	if err != nil {
		return nil
	}
	c.Close()
	return fmt.Errorf("another process serves its control socket %s (the socket directory is shared by all network namespaces: device names must be unique on the machine)", uapiSocket(name))
}

func openUserspace(name string, mtu int, ns nsRunner, log *slog.Logger) (*userspaceDevice, error) {
	if err := checkSocketFree(name); err != nil {
		return nil, err
	}
	var tdev tun.Device
	if err := ns.do(func() error {
		var err error
		tdev, err = tun.CreateTUN(name, mtu)
		return err
	}); err != nil {
		return nil, fmt.Errorf("creating TUN device: %w", err)
	}
	dev := device.NewDevice(&nsTUN{Device: tdev, ns: ns}, &nsBind{Bind: conn.NewDefaultBind(), ns: ns}, wgLogger(log))
	// Our own listener on the UAPI socket, not wireguard-go's
	// ipc.UAPIOpen and UAPIListen: UAPIOpen leaves the descriptor of the
	// listener it made open until the garbage collector finds it (it
	// returns a duplicate), so connections made after Close queued on a
	// socket nobody accepts on; and UAPIListen hands connections over
	// through a buffer that a close can leave holding one.
	l, err := unixsock.Listen(uapiSocket(name), 0o600)
	if err != nil {
		dev.Close()
		return nil, fmt.Errorf("listening on its UAPI socket: %w", err)
	}
	u := &userspaceDevice{dev: dev, uapi: l, conns: map[net.Conn]struct{}{}}
	u.wg.Add(1)
	go u.serve(log)
	return u, nil
}

func (u *userspaceDevice) serve(log *slog.Logger) {
	defer u.wg.Done()
	var delay time.Duration
	for {
		c, err := u.uapi.Accept()
		if errors.Is(err, net.ErrClosed) {
			return
		}
		if err != nil { // out of descriptors, or memory: try again
			delay = min(max(2*delay, 5*time.Millisecond), time.Second)
			log.Warn("accepting on the WireGuard UAPI socket", "err", err, "retryIn", delay)
			select {
			case <-u.dev.Wait():
				return
			case <-time.After(delay):
			}
			continue
		}
		delay = 0
		u.mu.Lock()
		if u.conns == nil { // closing
			u.mu.Unlock()
			c.Close()
			return
		}
		u.conns[c] = struct{}{}
		u.wg.Add(1)
		u.mu.Unlock()
		go func() {
			defer u.wg.Done()
			u.dev.IpcHandle(c) // closes c
			u.mu.Lock()
			delete(u.conns, c)
			u.mu.Unlock()
		}()
	}
}

// close stops the listener (which unlinks the socket), ends the handlers,
// closes the device (which closes the TUN, removing the interface) and waits
// for every goroutine.
func (u *userspaceDevice) close() {
	u.uapi.Close()
	u.mu.Lock()
	for c := range u.conns {
		c.Close()
	}
	u.conns = nil
	u.mu.Unlock()
	u.dev.Close()
	u.wg.Wait()
}

// nsTUN reads the TUN's MTU in its namespace: wireguard-go asks by interface
// name from whatever thread it runs on.
type nsTUN struct {
	tun.Device
	ns nsRunner
}

func (t *nsTUN) MTU() (int, error) {
	var mtu int
	err := t.ns.do(func() error {
		var err error
		mtu, err = t.Device.MTU()
		return err
	})
	return mtu, err
}

// nsBind opens the UDP sockets in the device's namespace: wireguard-go opens
// them when the interface comes up, from its event goroutine.
type nsBind struct {
	conn.Bind
	ns nsRunner
}

func (b *nsBind) Open(port uint16) ([]conn.ReceiveFunc, uint16, error) {
	var (
		fns    []conn.ReceiveFunc
		actual uint16
	)
	err := b.ns.do(func() error {
		var err error
		fns, actual, err = b.Bind.Open(port)
		return err
	})
	return fns, actual, err
}

// wgLogger adapts wireguard-go's logger: its verbose lines go to debug; its
// errors (mostly per-packet: a peer unreachable, a handshake dropped) to
// warn, at most 10 every 10 seconds, counting what was suppressed.
func wgLogger(log *slog.Logger) *device.Logger {
	var (
		mu         sync.Mutex
		windowFrom time.Time
		inWindow   int
		suppressed atomic.Int64
	)
	return &device.Logger{
		Verbosef: func(format string, args ...any) {
			if log.Enabled(context.Background(), slog.LevelDebug) {
				log.Debug("wireguard-go: " + fmt.Sprintf(format, args...))
			}
		},
		Errorf: func(format string, args ...any) {
			mu.Lock()
			now := time.Now()
			if now.Sub(windowFrom) > 10*time.Second {
				windowFrom, inWindow = now, 0
			}
			inWindow++
			ok := inWindow <= 10
			mu.Unlock()
			if !ok {
				suppressed.Add(1)
				return
			}
			if n := suppressed.Swap(0); n > 0 {
				log.Warn("wireguard-go: "+fmt.Sprintf(format, args...), "suppressedBefore", n)
				return
			}
			log.Warn("wireguard-go: " + fmt.Sprintf(format, args...))
		},
	}
}
