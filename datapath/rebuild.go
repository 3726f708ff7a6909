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
	badIPC, err := m.rebuildIPCache()
	if err != nil {
		return err
	}
	badBackends, maxID, err := m.rebuildBackends()
	if err != nil {
		return err
	}
	badSlots, maxSlotID, err := m.rebuildServices()
	if err != nil {
		return err
	}
	if err := m.repair(badIPC, badSlots, badBackends); err != nil {
		return fmt.Errorf("datapath: repair pinned maps in %s: %w", m.cfg.PinDir, err)
	}
	maxID = max(maxID, maxSlotID)
	m.nextID = 1
	if maxID < math.MaxUint32 {
		m.nextID = maxID + 1
	}
	return nil
}

// rebuildIPCache mirrors cm_ipcache and returns the keys it cannot decode.
func (m *Maps) rebuildIPCache() ([]ipcacheKey, error) {
	var bad []ipcacheKey
	err := bpfmap.Dump(m.ipcache, func(k *ipcacheKey, v *ipcacheValue) {
		p, ok := k.prefix()
		if !ok || p != p.Masked() || k.Pad != [3]uint8{} {
			bad = append(bad, *k)
			return
		}
		m.mirrorIPC(p, v.entry())
	})
	if err != nil {
		return nil, fmt.Errorf("datapath: read pinned ipcache: %w", err)
	}
	return bad, nil
}

// rebuildBackends mirrors cm_backends and returns the ids it cannot decode
// and the highest id seen.
func (m *Maps) rebuildBackends() (bad []uint32, maxID uint32, err error) {
	err = bpfmap.Dump(m.backends, func(id *uint32, v *backendValue) {
		b := v.backend()
		if *id == 0 || !b.Addr.IsValid() {
			bad = append(bad, *id)
			return
		}
		maxID = max(maxID, *id)
		m.backendsByID[*id] = b
		if _, dup := m.backendIDs[b]; !dup {
			m.backendIDs[b] = *id
		}
	})
	if err != nil {
		return nil, 0, fmt.Errorf("datapath: read pinned backends: %w", err)
	}
	return bad, maxID, nil
}

// rawService is one frontend's entries as read from cm_services.
type rawService struct {
	master bool
	count  uint16
	slots  map[uint16]uint32
}

// rebuildServices mirrors cm_services (after the backends, whose refcounts
// it fills) and returns the slots to delete and the highest backend id a
// slot names.
func (m *Maps) rebuildServices() (bad []serviceKey, maxID uint32, err error) {
	raw := make(map[Frontend]*rawService)
	err = bpfmap.Dump(m.services, func(k *serviceKey, v *serviceValue) {
		f := k.frontend()
		if !f.Addr.IsValid() || k.Pad != 0 {
			bad = append(bad, *k)
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
		return nil, 0, fmt.Errorf("datapath: read pinned services: %w", err)
	}
	for f, r := range raw {
		if !r.master {
			for s := range r.slots {
				bad = append(bad, makeServiceKey(f, s))
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
			bad = append(bad, makeServiceKey(f, s))
		}
		m.svcs[f] = st
	}
	return bad, maxID, nil
}

// repair deletes the entries rebuild found bad, and the backends no slot
// refers to.
func (m *Maps) repair(badIPC []ipcacheKey, badSlots []serviceKey, badBackends []uint32) error {
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
	return errors.Join(errs...)
}
