package datapath

import (
	"errors"
	"fmt"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// UpsertService sets f's backend slots. Ordering keeps a concurrent kernel
// reader safe: (1) new backends are written, (2) then the slots that point at
// them, (3) then the master's count; when shrinking (3) comes before (4) the
// deletion of the surplus slots and (5) of the backends no slot refers to any
// more. Backends are shared between services by (Addr, Port, Protocol,
// ClusterID) and refcounted per slot. Unchanged entries are not rewritten.
func (m *Maps) UpsertService(f Frontend, backends []Backend) (err error) {
	if f, err = normFrontend(f); err != nil {
		return err
	}
	bs, err := normBackends(f, backends)
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return bpfmap.Closed("upsert service " + f.String())
	}
	st := m.svcs[f]
	if st == nil {
		st = &svcState{}
	}
	var candidates []uint32 // ids that may have lost their last reference
	defer func() {
		m.storeState(f, st)
		if gcErr := m.collect(candidates); err == nil {
			err = gcErr
		}
	}()

	// (1) Backends.
	ids := make([]uint32, len(bs))
	for i, b := range bs {
		id, ok := m.backendIDs[b]
		if !ok {
			if id, err = m.allocID(b); err != nil {
				return err
			}
			v := makeBackendValue(b)
			if err := m.backends.Update(&id, &v, ebpf.UpdateAny); err != nil {
				return m.mapErr(m.backends, fmt.Sprintf("write backend %d (%s) of %s", id, b, f), err)
			}
			m.backendIDs[b], m.backendsByID[id] = id, b
			candidates = append(candidates, id) // released again if a later step fails
		}
		ids[i] = id
	}
	// (2) Slots.
	for i, id := range ids {
		if i < len(st.slots) && st.slots[i] == id {
			continue
		}
		k, v := makeServiceKey(f, uint16(i+1)), serviceValue{BackendID: id}
		if err := m.services.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return m.mapErr(m.services, fmt.Sprintf("write slot %d of %s", i+1, f), err)
		}
		if i < len(st.slots) {
			if old := st.slots[i]; old != 0 {
				m.refs[old]--
				candidates = append(candidates, old)
			}
			st.slots[i] = id
		} else {
			st.slots = append(st.slots, id)
		}
		m.refs[id]++
	}
	// Without a master no reader can reach the slots: drop surplus ones
	// first, so that they do not take the room the master needs.
	if !st.master {
		if candidates, err = m.deleteSlots(f, st, len(ids), candidates); err != nil {
			return err
		}
	}
	// (3) Master.
	if n := uint16(len(ids)); !st.master || st.count != n {
		k, v := makeServiceKey(f, 0), serviceValue{Count: n}
		if err := m.services.Update(&k, &v, ebpf.UpdateAny); err != nil {
			return m.mapErr(m.services, fmt.Sprintf("write master of %s", f), err)
		}
		st.master, st.count = true, n
	}
	// (4) Surplus slots; (5) happens in the deferred collect.
	candidates, err = m.deleteSlots(f, st, len(ids), candidates)
	return err
}

// DeleteService removes f's master, then its slots, then the backends no
// other slot refers to. An absent frontend is fine.
func (m *Maps) DeleteService(f Frontend) (err error) {
	if f, err = normFrontend(f); err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return bpfmap.Closed("delete service " + f.String())
	}
	st := m.svcs[f]
	if st == nil {
		return nil
	}
	var candidates []uint32
	defer func() {
		m.storeState(f, st)
		if gcErr := m.collect(candidates); err == nil {
			err = gcErr
		}
	}()
	if st.master {
		k := makeServiceKey(f, 0)
		if err := m.services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("datapath: delete master of %s: %w", f, err)
		}
		st.master, st.count = false, 0
	}
	candidates, err = m.deleteSlots(f, st, 0, candidates)
	return err
}

// deleteSlots deletes f's slots beyond keep, last first, and appends the ids
// they referred to to candidates.
func (m *Maps) deleteSlots(f Frontend, st *svcState, keep int, candidates []uint32) ([]uint32, error) {
	for len(st.slots) > keep {
		j := len(st.slots) - 1
		k := makeServiceKey(f, uint16(j+1))
		if err := m.services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return candidates, fmt.Errorf("datapath: delete slot %d of %s: %w", j+1, f, err)
		}
		if old := st.slots[j]; old != 0 {
			m.refs[old]--
			candidates = append(candidates, old)
		}
		st.slots = st.slots[:j]
	}
	return candidates, nil
}

func (m *Maps) storeState(f Frontend, st *svcState) {
	if st.master || len(st.slots) > 0 {
		m.svcs[f] = st
	} else {
		delete(m.svcs, f)
	}
}

// collect deletes, from the kernel and the mirror, the backends among ids
// that no slot refers to any more.
func (m *Maps) collect(ids []uint32) error {
	var errs []error
	for _, id := range ids {
		b, ok := m.backendsByID[id]
		if !ok || m.refs[id] > 0 {
			continue
		}
		if err := m.backends.Delete(&id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("datapath: delete backend %d (%s): %w", id, b, err))
			continue
		}
		delete(m.backendsByID, id)
		delete(m.refs, id)
		if m.backendIDs[b] == id {
			delete(m.backendIDs, b)
		}
	}
	return errors.Join(errs...)
}

// allocID returns a free backend id for b. Ids grow monotonically (wrapping
// past 2^32-1 to 1, skipping ids in use), so a freed id is not handed out
// again soon after a reader may have seen it.
func (m *Maps) allocID(b Backend) (uint32, error) {
	if uint32(len(m.backendsByID)) >= m.cfg.MaxBackends {
		return 0, fullErr("allocate an id for backend "+b.String(), BackendsMapName, m.cfg.MaxBackends, 0)
	}
	for {
		id := m.nextID
		if m.nextID++; m.nextID == 0 {
			m.nextID = 1
		}
		if _, used := m.backendsByID[id]; !used {
			return id, nil
		}
	}
}

// slotRef names one slot of one frontend.
type slotRef struct {
	f    Frontend
	slot uint16
}

// Services dumps cm_services and cm_backends from the kernel: every frontend
// with a master entry, with the backends of slots 1..count in slot order. A
// slot that is missing or points at a missing backend is left out (the
// writer never produces one).
func (m *Maps) Services() (map[Frontend][]Backend, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, bpfmap.Closed("dump services")
	}
	masters := make(map[Frontend]uint16, len(m.svcs))
	slots := make(map[slotRef]uint32, len(m.refs))
	err := bpfmap.Dump(m.services, func(k *serviceKey, v *serviceValue) {
		f := k.frontend()
		if k.Slot == 0 {
			masters[f] = v.Count
		} else {
			slots[slotRef{f, k.Slot}] = v.BackendID
		}
	})
	if err != nil {
		return nil, fmt.Errorf("datapath: dump services: %w", err)
	}
	backends := make(map[uint32]Backend, len(m.backendsByID))
	err = bpfmap.Dump(m.backends, func(id *uint32, v *backendValue) { backends[*id] = v.backend() })
	if err != nil {
		return nil, fmt.Errorf("datapath: dump backends: %w", err)
	}
	out := make(map[Frontend][]Backend, len(masters))
	for f, n := range masters {
		if !f.Addr.IsValid() {
			continue
		}
		list := make([]Backend, 0, n)
		for s := uint16(1); s <= n && s != 0; s++ {
			id, ok := slots[slotRef{f, s}]
			if b, found := backends[id]; ok && found {
				list = append(list, b)
			}
		}
		out[f] = list
	}
	return out, nil
}
