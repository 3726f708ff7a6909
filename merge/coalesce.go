package merge

import (
	"slices"
	"sync"
	"time"
)

// Coalescing of service writes. When many clusters connect at once every
// global service hears from each of them within seconds, and each write of
// a service rewrites the datapath slots after the arriving cluster's
// backends. With Config.CoalesceServices set, a change of a service not
// written within the window is written at once (a single change gains no
// latency); later changes within the window are folded into one write at
// its end. Every change is written at most one window after it arrived.
// The trailing writes run on a timer the merger owns: Close stops it and
// waits for it, writing what was pending.
//
// Only a remote's service updates and its node ranges are coalesced. When
// the remote becomes ready (PruneCluster), its pending changes are written
// first, so that a ready remote is in the datapath; its drop, a stale
// heartbeat and the local state are written at once.

// coalescer is the merger's pending service writes; guarded by Merger.mu
// except flushing.
type coalescer struct {
	window  time.Duration
	written map[ServiceName]time.Time // when each service was last written
	dirty   map[ServiceName][]uint16  // changes waiting for the trailing write: by whom (cluster ids)
	timer   *time.Timer               // the pending trailing write; nil: none
	due     time.Time                 // when timer fires
	closed  bool
	// flushing counts the timer callbacks that may still run.
	flushing sync.WaitGroup
}

// serviceChangedLocked writes service n, changed by cluster id, now, or at
// the end of its window when it was written less than a window ago.
func (m *Merger) serviceChangedLocked(n ServiceName, id uint16) {
	c := &m.co
	if c.window <= 0 || c.closed {
		m.syncService(n)
		return
	}
	if last, ok := c.written[n]; !ok || time.Since(last) >= c.window {
		m.syncService(n)
		return
	}
	if !slices.Contains(c.dirty[n], id) {
		c.dirty[n] = append(c.dirty[n], id)
	}
	if c.timer == nil {
		// Due when this service's window ends, less than a window from
		// now; the trailing write takes every pending service, and the
		// others' changes come after this one: none waits longer than a
		// window.
		c.flushing.Add(1)
		c.due = c.written[n].Add(c.window)
		c.timer = time.AfterFunc(time.Until(c.due), m.flushTimer)
	}
}

// serviceWrittenLocked records that service n was written.
func (m *Merger) serviceWrittenLocked(n ServiceName) {
	c := &m.co
	delete(c.dirty, n)
	if c.window > 0 && !c.closed {
		c.written[n] = time.Now()
	}
}

// flushTimer is the trailing write.
func (m *Merger) flushTimer() {
	defer m.co.flushing.Done()
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.co.closed {
		return // Close flushed
	}
	m.co.timer = nil
	m.flushDirtyLocked()
	// Forget the services whose window ended: they are written at once
	// on their next change.
	for n, t := range m.co.written {
		if time.Since(t) >= m.co.window {
			delete(m.co.written, n)
		}
	}
}

// flushDirtyLocked writes every pending service now.
func (m *Merger) flushDirtyLocked() {
	for n := range m.co.dirty {
		m.syncService(n) // deletes n from dirty
	}
}

// flushClusterLocked writes now the pending services cluster id changed.
func (m *Merger) flushClusterLocked(id uint16) {
	for n, ids := range m.co.dirty {
		if slices.Contains(ids, id) {
			m.syncService(n)
		}
	}
}

// PendingServices is the number of services whose changes wait for their
// trailing write (Config.CoalesceServices).
func (m *Merger) PendingServices() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return len(m.co.dirty)
}

// Close writes the pending service changes, stops the trailing-write timer
// and waits for it. The merger stays usable: later changes are written at
// once.
func (m *Merger) Close() {
	m.mu.Lock()
	m.co.closed = true
	if m.co.timer != nil && m.co.timer.Stop() {
		m.co.flushing.Done()
	}
	m.co.timer = nil
	m.flushDirtyLocked()
	m.co.written = map[ServiceName]time.Time{}
	m.mu.Unlock()
	m.co.flushing.Wait()
}
