package agentsync

import (
	"errors"

	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/clustermesh/clustermesh/wire"
)

// Pages of a list are bounded by bytes as well as by count: a remote
// publishing large values (up to wire.MaxValueBytes each) must not make one
// page, or the pages in flight, hold gigabytes. The etcd client refuses any
// response over maxResponseBytes before reading it (gRPC checks the
// length prefix), and the pager then asks for fewer entries; after each page
// it sizes the next one from the bytes per entry it saw. At most three pages
// are alive at once (one applied, one queued, one being read), so a list
// holds at most three responses of maxResponseBytes.

// DefaultListPageBytes is the default byte bound of one list page.
const DefaultListPageBytes = 8 << 20

// maxResponseBytes is the largest response the agent reads from a remote:
// a page at its bound plus one entry at the wire limit (a page holds at
// least one entry). A watch response carries at most one publishing
// transaction, which our apiservers keep under 4 MiB; the floor leaves
// room for one even with a small page bound.
func maxResponseBytes(pageBytes int64) int {
	return max(int(pageBytes)+wire.MaxValueBytes+wire.MaxKeyBytes+64<<10, 8<<20)
}

// pager chooses each page's entry limit.
type pager struct {
	maxCount  int64 // Config.ListPageSize
	maxBytes  int64 // Config.ListPageBytes
	limit     int64 // the next page's entry limit
	lastBytes int64 // the last page's size
}

func newPager(maxCount, maxBytes int64) *pager {
	return &pager{maxCount: maxCount, maxBytes: maxBytes, limit: maxCount}
}

// observe sizes the next page from this one's bytes per entry.
func (p *pager) observe(kvs []*mvccpb.KeyValue) {
	var n int64
	for _, kv := range kvs {
		n += int64(len(kv.Key) + len(kv.Value))
	}
	p.lastBytes = n
	if len(kvs) == 0 || n == 0 {
		return
	}
	per := max(n/int64(len(kvs)), 1)
	p.limit = min(max(p.maxBytes/per, 1), p.maxCount)
}

// shrink asks for a quarter of the entries after a response too large to
// read; it reports false when a page is already one entry.
func (p *pager) shrink() bool {
	if p.limit <= 1 {
		return false
	}
	p.limit = max(p.limit/4, 1)
	return true
}

// isTooLarge reports whether err is gRPC refusing a response over the
// client's receive limit.
func isTooLarge(err error) bool {
	if err == nil {
		return false
	}
	var se interface{ GRPCStatus() *status.Status }
	if errors.As(err, &se) {
		return se.GRPCStatus().Code() == codes.ResourceExhausted
	}
	return status.Code(err) == codes.ResourceExhausted
}

// notePage records the largest list page read, for status.
func (ks *kindState) notePage(bytes int64) {
	ks.mu.Lock()
	ks.stats.maxPageBytes = max(ks.stats.maxPageBytes, bytes)
	ks.mu.Unlock()
}
