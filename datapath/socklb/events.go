package socklb

import (
	"fmt"
	"os"
	"syscall"

	"github.com/cilium/ebpf"
	"golang.org/x/sys/unix"

	"github.com/clustermesh/clustermesh/datapath/flows"
	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// Counters are the socket load balancer's counters, summed over CPUs,
// since its pinned counters were created.
type Counters struct {
	Connects   uint64 // connects (TCP, connected UDP) sent to a backend
	Datagrams  uint64 // datagrams (sendto) sent to a backend
	Refused    uint64 // connects and datagrams refused: no backend
	Events     uint64 // translation events written
	EventsLost uint64 // translation events the full ring buffer could not take
}

// Indexes of cm_sock_metrics (config.go).
const (
	counterConnects   = 0
	counterDatagrams  = 1
	counterRefused    = 2
	counterEvents     = 6
	counterEventsLost = 7
)

// OpenEvents opens a reader of the translation events: every flow it
// reads is of kind flows.KindSockTranslate (see flows.Flow for its
// fields). It holds its own handles of the ring buffer and the counters:
// closing the LB does not stop it. Events written before it opened and
// not yet read by a previous reader are read first; read one pin
// directory's events with one reader at a time.
func (l *LB) OpenEvents() (*flows.Reader, error) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, bpfmap.Closed("open socket translation events")
	}
	ring, err := l.objs.CmSockEvents.Clone()
	var metrics *ebpf.Map
	if err == nil {
		if metrics, err = l.objs.CmSockMetrics.Clone(); err != nil {
			ring.Close()
		}
	}
	l.mu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("datapath: open socket translation events: %w", err)
	}
	return flows.NewReader(ring, metrics)
}

// Counters reads the counters.
func (l *LB) Counters() (Counters, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.closed {
		return Counters{}, bpfmap.Closed("read socket load balancer counters")
	}
	var c Counters
	for _, f := range []struct {
		idx uint32
		dst *uint64
	}{
		{counterConnects, &c.Connects}, {counterDatagrams, &c.Datagrams}, {counterRefused, &c.Refused},
		{counterEvents, &c.Events}, {counterEventsLost, &c.EventsLost},
	} {
		var per []uint64
		if err := l.objs.CmSockMetrics.Lookup(&f.idx, &per); err != nil {
			return Counters{}, fmt.Errorf("datapath: read socket load balancer counter %d: %w", f.idx, err)
		}
		for _, v := range per {
			*f.dst += v
		}
	}
	return c, nil
}

// NetnsCookie returns the cookie of the calling thread's network
// namespace, as translation events report it (flows.Flow.NetnsCookie):
// called inside each pod's namespace (a locked thread switched with setns),
// it gives the agent the pod of each event. Linux 5.14 or later
// (SO_NETNS_COOKIE).
func NetnsCookie() (uint64, error) {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("reading the network namespace cookie: %w", err)
	}
	defer unix.Close(fd)
	c, err := unix.GetsockoptUint64(fd, unix.SOL_SOCKET, unix.SO_NETNS_COOKIE)
	if err != nil {
		return 0, fmt.Errorf("reading the network namespace cookie: %w", err)
	}
	return c, nil
}

// CgroupID returns the id of the cgroup v2 directory dir (its inode), as
// translation events report the cgroup of the process that connected or
// sent (flows.Flow.CgroupID): the agent maps each pod's cgroup to the pod.
func CgroupID(dir string) (uint64, error) {
	fi, err := os.Stat(dir)
	if err != nil {
		return 0, fmt.Errorf("reading the id of cgroup %q: %w", dir, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return 0, fmt.Errorf("reading the id of cgroup %q: no inode", dir)
	}
	if err := checkCgroup2(dir); err != nil {
		return 0, err
	}
	return st.Ino, nil
}
