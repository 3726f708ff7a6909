package wireguard

import (
	"fmt"
	"runtime"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// nsRunner runs functions in the device's network namespace. Sockets and
// interfaces belong to the namespace of the thread that creates them, and
// goroutines inherit nothing, so every creation (the TUN, the UDP sockets of
// the userspace device, netlink and genetlink sockets) goes through do.
type nsRunner struct {
	h   netns.NsHandle
	set bool
}

func openNS(path string) (nsRunner, error) {
	if path == "" {
		return nsRunner{}, nil
	}
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nsRunner{}, fmt.Errorf("opening network namespace %s: %w", path, err)
	}
	return nsRunner{h: h, set: true}, nil
}

// do runs fn in the namespace. In another namespace it runs on a fresh
// goroutine locked to its thread and never unlocked: the thread exits with
// the goroutine, so no other goroutine ever runs on a thread left in a
// foreign namespace, whatever fn does.
func (r nsRunner) do(fn func() error) error {
	if !r.set {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(r.h); err != nil {
			errc <- fmt.Errorf("entering the network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

// netlinkHandle returns a netlink handle whose sockets live in the namespace.
func (r nsRunner) netlinkHandle() (*netlink.Handle, error) {
	var h *netlink.Handle
	err := r.do(func() error {
		var err error
		h, err = netlink.NewHandle()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("opening a netlink socket: %w", err)
	}
	return h, nil
}

func (r nsRunner) close() {
	if r.set {
		r.h.Close()
	}
}
