package observe

import (
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"time"
)

// WriteCompact writes one event in hubble's compact form.
func WriteCompact(w io.Writer, ev Event) error {
	if ev.Lost != nil {
		why := "the datapath's ring buffer was full"
		if ev.Lost.Source == LostSubscriber {
			why = "this client read too slowly"
		}
		_, err := fmt.Fprintf(w, "EVENTS LOST: %d (%s)\n", ev.Lost.Count, why)
		return err
	}
	if ev.Flow == nil {
		return nil
	}
	_, err := io.WriteString(w, ev.Flow.Compact()+"\n")
	return err
}

// Compact is the flow on one line, as `clustermesh observe` prints it:
// "Nov 21 03:00:00.123: SRC (ID:n) -> DST (ID:m) [reason ]VERDICT (PROTO)".
func (f *Flow) Compact() string {
	src, dst, arrow := compactEndpoint(&f.Source), compactEndpoint(&f.Destination), "->"
	if f.IsReply {
		src, dst, arrow = dst, src, "<-"
	}
	verdict := f.Verdict
	if f.DropReason != "" {
		verdict = f.DropReason + " " + verdict
	}
	return fmt.Sprintf("%s: %s %s %s %s (%s)", f.Time.Local().Format(time.StampMilli), src, arrow, dst, verdict, f.Protocol)
}

// compactEndpoint is [cluster/]namespace/pod:port, or [cluster/]ip:port
// without a pod, then its identity: (ID:n), or (world) and the like for a
// reserved one.
func compactEndpoint(e *Endpoint) string {
	var b strings.Builder
	if e.Cluster != "" {
		b.WriteString(e.Cluster + "/")
	}
	if e.Pod != "" {
		if e.Namespace != "" {
			b.WriteString(e.Namespace + "/")
		}
		b.WriteString(e.Pod)
		if e.Port != 0 {
			b.WriteString(":" + strconv.Itoa(int(e.Port)))
		}
	} else if a, err := netip.ParseAddr(e.IP); err == nil && e.Port != 0 {
		b.WriteString(netip.AddrPortFrom(a, e.Port).String())
	} else {
		b.WriteString(e.IP)
	}
	id := "ID:" + strconv.FormatUint(uint64(e.Identity), 10)
	for _, l := range e.Labels {
		if name, ok := strings.CutPrefix(l, "reserved:"); ok {
			id = strings.TrimSuffix(name, "=")
			break
		}
	}
	b.WriteString(" (" + id + ")")
	return b.String()
}
