package fqdn

import (
	"container/heap"
	"container/list"
	"context"
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"time"
)

// Change is what one subscription's selector gained and lost: an address is
// Added when the first name the selector matches holds it, Removed when
// the last one no longer does (its TTL ended, or it was evicted).
type Change struct {
	Selector Selector
	Added    []netip.Addr // sorted
	Removed  []netip.Addr // sorted
}

// Cache holds the addresses allowed DNS answers returned, per name, each
// until its TTL (at least Config.MinTTL) ends. Safe for concurrent use.
type Cache struct {
	cfg  Config
	m    *metrics
	wake chan struct{} // an earlier expiry than Run waits for

	mu    sync.Mutex
	names map[string]*entry
	byIP  map[netip.Addr]map[*entry]struct{} // the names holding each address
	lru   *list.List                         // of *entry, most recently updated first
	exp   expiryHeap
	ips   int
	subs  []*subscription // in the order of Subscribe
	st    Stats
}

type entry struct {
	name string
	ips  map[netip.Addr]time.Time // expiry of each address
	elem *list.Element
	subs []*subscription // subscriptions whose selector matches name
}

type subscription struct {
	m    *Matcher
	fn   func(Change)
	refs map[netip.Addr]int // names matched holding each address
	ch   *Change            // pending, while the cache's lock is held
}

// Stats are the cache's counts.
type Stats struct {
	Names, IPs        int
	EvictedIPsPerName uint64
	EvictedNames      uint64
	Expired           uint64
	Updates           uint64
	Subscriptions     int
	NextExpiry        time.Time // zero when empty
	ExpiryHeapLen     int
}

// New returns a Cache for cfg. Expiry runs in Run, or in Expire for a
// caller driving its own clock.
func New(cfg Config) (*Cache, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.setDefaults()
	m, err := newMetrics(cfg.Registerer)
	if err != nil {
		return nil, err
	}
	return &Cache{cfg: cfg, m: m, wake: make(chan struct{}, 1), names: map[string]*entry{},
		byIP: map[netip.Addr]map[*entry]struct{}{}, lru: list.New()}, nil
}

// Config is the cache's configuration, defaults applied.
func (c *Cache) Config() Config { return c.cfg }

// Update records that name resolved to ips for ttl (raised to MinTTL,
// lowered to MaxTTL), at the cache's clock; an address the name already
// holds keeps the later of its two expiries. Subscribers whose selector
// matches name are told what they gained before Update returns.
func (c *Cache) Update(name string, ips []netip.Addr, ttl time.Duration) {
	if len(ips) == 0 {
		return
	}
	ttl = max(c.cfg.MinTTL, min(ttl, c.cfg.MaxTTL))
	name = Normalize(name)
	c.mu.Lock()
	defer c.mu.Unlock()
	at := c.cfg.Now().Add(ttl)
	e := c.entryLocked(name)
	c.lru.MoveToFront(e.elem)
	for _, ip := range ips {
		c.addLocked(e, ip.Unmap(), at)
	}
	c.limitIPsLocked(e)
	c.compactLocked()
	c.st.Updates++
	c.m.updates.Inc()
	c.notifyLocked()
}

func (c *Cache) entryLocked(name string) *entry {
	if e := c.names[name]; e != nil {
		return e
	}
	if len(c.names) >= c.cfg.MaxNames {
		if back := c.lru.Back(); back != nil {
			old := back.Value.(*entry)
			c.st.EvictedNames++
			c.m.evictions.WithLabelValues(reasonNames).Add(float64(len(old.ips)))
			c.removeEntryLocked(old)
		}
	}
	e := &entry{name: name, ips: map[netip.Addr]time.Time{}}
	e.elem = c.lru.PushFront(e)
	for _, s := range c.subs {
		if s.m.Match(name) {
			e.subs = append(e.subs, s)
		}
	}
	c.names[name] = e
	c.m.names.Set(float64(len(c.names)))
	return e
}

func (c *Cache) addLocked(e *entry, ip netip.Addr, at time.Time) {
	old, ok := e.ips[ip]
	if ok && !at.After(old) {
		return
	}
	e.ips[ip] = at
	c.pushExpiryLocked(expiry{at: at, name: e.name, ip: ip})
	if ok {
		return
	}
	c.ips++
	c.m.ips.Set(float64(c.ips))
	holders := c.byIP[ip]
	if holders == nil {
		holders = map[*entry]struct{}{}
		c.byIP[ip] = holders
	}
	holders[e] = struct{}{}
	for _, s := range e.subs {
		if s.refs[ip]++; s.refs[ip] == 1 {
			s.pending().Added = append(s.pending().Added, ip)
		}
	}
}

// limitIPsLocked evicts e's addresses expiring first beyond MaxIPsPerName.
func (c *Cache) limitIPsLocked(e *entry) {
	over := len(e.ips) - c.cfg.MaxIPsPerName
	if over <= 0 {
		return
	}
	type ipAt struct {
		ip netip.Addr
		at time.Time
	}
	all := make([]ipAt, 0, len(e.ips))
	for ip, at := range e.ips {
		all = append(all, ipAt{ip, at})
	}
	slices.SortFunc(all, func(a, b ipAt) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.ip.Compare(b.ip)
	})
	for _, x := range all[:over] {
		c.removeIPLocked(e, x.ip)
	}
	c.st.EvictedIPsPerName += uint64(over)
	c.m.evictions.WithLabelValues(reasonIPsPerName).Add(float64(over))
}

func (c *Cache) removeIPLocked(e *entry, ip netip.Addr) {
	delete(e.ips, ip)
	if holders := c.byIP[ip]; len(holders) <= 1 {
		delete(c.byIP, ip)
	} else {
		delete(holders, e)
	}
	c.ips--
	c.m.ips.Set(float64(c.ips))
	for _, s := range e.subs {
		if s.refs[ip]--; s.refs[ip] == 0 {
			delete(s.refs, ip)
			s.pending().Removed = append(s.pending().Removed, ip)
		}
	}
}

func (c *Cache) removeEntryLocked(e *entry) {
	for ip := range e.ips {
		c.removeIPLocked(e, ip)
	}
	c.lru.Remove(e.elem)
	delete(c.names, e.name)
	c.m.names.Set(float64(len(c.names)))
}

func (s *subscription) pending() *Change {
	if s.ch == nil {
		s.ch = &Change{Selector: s.m.Selector()}
	}
	return s.ch
}

// notifyLocked hands every subscription its pending change, in the order
// of Subscribe, with the cache's lock held (so changes reach a subscriber
// in the order they happened).
func (c *Cache) notifyLocked() {
	for _, s := range c.subs {
		ch := s.ch
		if ch == nil {
			continue
		}
		s.ch = nil
		ch.Added, ch.Removed = cancelOut(ch.Added, ch.Removed)
		if len(ch.Added) == 0 && len(ch.Removed) == 0 {
			continue
		}
		s.fn(*ch)
	}
}

// cancelOut sorts both lists and drops an address both removed and added
// back in one change (an eviction of a name re-added at once).
func cancelOut(added, removed []netip.Addr) ([]netip.Addr, []netip.Addr) {
	slices.SortFunc(added, netip.Addr.Compare)
	slices.SortFunc(removed, netip.Addr.Compare)
	if len(added) == 0 || len(removed) == 0 {
		return added, removed
	}
	in := map[netip.Addr]int{}
	for _, a := range added {
		in[a]++
	}
	for _, r := range removed {
		in[r]--
	}
	keep := func(l []netip.Addr, sign int) []netip.Addr {
		return slices.DeleteFunc(l, func(a netip.Addr) bool { return in[a]*sign <= 0 })
	}
	return keep(added, 1), keep(removed, -1)
}

// Subscribe calls fn with every change of the addresses the names sel
// matches hold, first (before Subscribe returns) with those they hold now.
//
// The contract: fn is called synchronously, with the cache's lock held,
// from the goroutine that changed the cache — the DNS proxy before it
// releases an answer, or Run/Expire. It must return quickly (write a map,
// hand off to a channel it owns; never a network call), must not block
// and must not call the Cache (that deadlocks). Changes reach one fn in
// the order they happened. The returned cancel stops the calls (once it
// returned, fn is not called again); it is safe to call twice.
func (c *Cache) Subscribe(sel Selector, fn func(Change)) (cancel func(), err error) {
	m, err := Compile(sel)
	if err != nil {
		return nil, err
	}
	s := &subscription{m: m, fn: fn, refs: map[netip.Addr]int{}}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = append(c.subs, s)
	for name, e := range c.names {
		if !m.Match(name) {
			continue
		}
		e.subs = append(e.subs, s)
		for ip := range e.ips {
			if s.refs[ip]++; s.refs[ip] == 1 {
				s.pending().Added = append(s.pending().Added, ip)
			}
		}
	}
	c.notifyLocked()
	var once sync.Once
	return func() { once.Do(func() { c.unsubscribe(s) }) }, nil
}

func (c *Cache) unsubscribe(s *subscription) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.subs = slices.DeleteFunc(c.subs, func(x *subscription) bool { return x == s })
	for _, e := range c.names {
		e.subs = slices.DeleteFunc(e.subs, func(x *subscription) bool { return x == s })
	}
}

// Lookup is the addresses name holds now, sorted.
func (c *Cache) Lookup(name string) []netip.Addr {
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.names[Normalize(name)]
	if e == nil {
		return nil
	}
	out := make([]netip.Addr, 0, len(e.ips))
	for ip := range e.ips {
		out = append(out, ip)
	}
	slices.SortFunc(out, netip.Addr.Compare)
	return out
}

// NamesOf is the names holding addr now, sorted (what Hubble shows as a
// flow's source_names and destination_names).
func (c *Cache) NamesOf(addr netip.Addr) []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	holders := c.byIP[addr.Unmap()]
	out := make([]string, 0, len(holders))
	for e := range holders {
		out = append(out, e.name)
	}
	slices.Sort(out)
	return out
}

// Stats is the cache's counts now.
func (c *Cache) Stats() Stats {
	c.mu.Lock()
	defer c.mu.Unlock()
	st := c.st
	st.Names, st.IPs, st.Subscriptions, st.ExpiryHeapLen = len(c.names), c.ips, len(c.subs), len(c.exp)
	if len(c.exp) > 0 {
		st.NextExpiry = c.exp[0].at
	}
	return st
}

// Expire removes every address whose TTL ended at now, telling the
// subscribers; it returns how many were removed.
func (c *Cache) Expire(now time.Time) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for len(c.exp) > 0 && !c.exp[0].at.After(now) {
		x := heap.Pop(&c.exp).(expiry)
		e := c.names[x.name]
		if e == nil || !e.ips[x.ip].Equal(x.at) {
			continue // a later update or an eviction superseded it
		}
		c.removeIPLocked(e, x.ip)
		if len(e.ips) == 0 {
			c.removeEntryLocked(e)
		}
		n++
	}
	c.st.Expired += uint64(n)
	c.m.expirations.Add(float64(n))
	c.compactLocked()
	c.notifyLocked()
	return n
}

// Run expires addresses at the end of their TTL until ctx is done.
func (c *Cache) Run(ctx context.Context) error {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	for {
		c.mu.Lock()
		wait := time.Hour
		if len(c.exp) > 0 {
			wait = max(0, c.exp[0].at.Sub(c.cfg.Now()))
		}
		c.mu.Unlock()
		t.Reset(wait)
		select {
		case <-ctx.Done():
			return nil
		case <-c.wake:
		case <-t.C:
			c.Expire(c.cfg.Now())
		}
	}
}

func (c *Cache) pushExpiryLocked(x expiry) {
	heap.Push(&c.exp, x)
	if c.exp[0] == x {
		select {
		case c.wake <- struct{}{}:
		default:
		}
	}
}

// compactLocked rebuilds the expiry heap when superseded items (an
// address whose TTL an answer extended) outnumber the live ones.
func (c *Cache) compactLocked() {
	if len(c.exp) <= 2*c.ips+1024 {
		return
	}
	c.exp = c.exp[:0]
	for _, e := range c.names {
		for ip, at := range e.ips {
			c.exp = append(c.exp, expiry{at: at, name: e.name, ip: ip})
		}
	}
	heap.Init(&c.exp)
}

type expiry struct {
	at   time.Time
	name string
	ip   netip.Addr
}

type expiryHeap []expiry

func (h expiryHeap) Len() int           { return len(h) }
func (h expiryHeap) Less(i, j int) bool { return h[i].at.Before(h[j].at) }
func (h expiryHeap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *expiryHeap) Push(x any)        { *h = append(*h, x.(expiry)) }
func (h *expiryHeap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

// String describes the cache for logs.
func (c *Cache) String() string {
	st := c.Stats()
	return fmt.Sprintf("fqdn cache: %d names, %d addresses, %d subscriptions", st.Names, st.IPs, st.Subscriptions)
}
