package datapath

import (
	"errors"
	"fmt"
	"math"

	"github.com/cilium/ebpf"

	"github.com/clustermesh/clustermesh/datapath/internal/bpfmap"
)

// rebuild fills the mirror from the kernel maps after open, and repairs what
// an interrupted writer (or a foreign one) may have left: entries this
// package cannot decode, slots without a master or beyond its count, and
// backends no slot refers to are deleted. A slot that is missing or points at
// a missing backend is mirrored as id 0, so that the next upsert of its
// frontend rewrites it.
func (m *Maps) rebuild() error {
	var maxID uint32

	var badIPC []ipcacheKey
	err := bpfmap.Dump(m.ipcache, func(k *ipcacheKey, v *ipcacheValue) {
		p, ok := k.prefix()
		if !ok || p != p.Masked() || k.Pad != [3]uint8{} {
			badIPC = append(badIPC, *k)
			return
		}
		m.mirrorIPC(p, v.entry())
	})
	if err != nil {
		return fmt.Errorf("datapath: read pinned ipcache: %w", err)
	}

	var badBackends []uint32
	err = bpfmap.Dump(m.backends, func(id *uint32, v *backendValue) {
		b := v.backend()
		if *id == 0 || !b.Addr.IsValid() {
			badBackends = append(badBackends, *id)
			return
		}
		maxID = max(maxID, *id)
		m.backendsByID[*id] = b
		if _, dup := m.backendIDs[b]; !dup {
			m.backendIDs[b] = *id
		}
	})
	if err != nil {
		return fmt.Errorf("datapath: read pinned backends: %w", err)
	}

	type rawService struct {
		master bool
		count  uint16
		slots  map[uint16]uint32
	}
	raw := make(map[Frontend]*rawService)
	var badSlots []serviceKey
	err = bpfmap.Dump(m.services, func(k *serviceKey, v *serviceValue) {
		f := k.frontend()
		if !f.Addr.IsValid() || k.Pad != 0 {
			badSlots = append(badSlots, *k)
			return
		}
		r := raw[f]
		if r == nil {
			r = &rawService{slots: make(map[uint16]uint32)}
			raw[f] = r
		}
		if k.Slot == 0 {
			r.master, r.count = true, v.Count
		} else {
			r.slots[k.Slot] = v.BackendID
			maxID = max(maxID, v.BackendID)
		}
	})
	if err != nil {
		return fmt.Errorf("datapath: read pinned services: %w", err)
	}
	for f, r := range raw {
		if !r.master {
			for s := range r.slots {
				badSlots = append(badSlots, makeServiceKey(f, s))
			}
			continue
		}
		st := &svcState{master: true, count: r.count, slots: make([]uint32, r.count)}
		for i := range st.slots {
			s := uint16(i + 1)
			id, ok := r.slots[s]
			delete(r.slots, s)
			if _, known := m.backendsByID[id]; ok && known {
				st.slots[i] = id
				m.refs[id]++
			}
		}
		for s := range r.slots { // beyond count
			badSlots = append(badSlots, makeServiceKey(f, s))
		}
		m.svcs[f] = st
	}

	// Repair.
	var errs []error
	for _, k := range badIPC {
		if err := m.ipcache.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for _, k := range badSlots {
		if err := m.services.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for _, id := range badBackends {
		if err := m.backends.Delete(&id); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	unreferenced := make([]uint32, 0)
	for id := range m.backendsByID {
		if m.refs[id] == 0 {
			unreferenced = append(unreferenced, id)
		}
	}
	errs = append(errs, m.collect(unreferenced))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("datapath: repair pinned maps in %s: %w", m.cfg.PinDir, err)
	}

	m.nextID = 1
	if maxID < math.MaxUint32 {
		m.nextID = maxID + 1
	}
	return nil
}
