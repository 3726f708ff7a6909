package l7proxy

import (
	"encoding/binary"
	"hash/fnv"
)

// ports hands out proxy ports from [min, max]: a key's first choice is
// fixed by its hash, so a redirect gets the same port again after a
// restart (the policy entries an agent left pinned keep pointing at it)
// unless another key took it first; then the next free one after it.
type ports struct {
	min, max uint16
	used     map[uint16]RedirectKey
}

func newPorts(min, max uint16) *ports {
	return &ports{min: min, max: max, used: map[uint16]RedirectKey{}}
}

// preferred is k's first choice.
func (ps *ports) preferred(k RedirectKey) uint16 {
	h := fnv.New32a()
	var b [7]byte
	binary.BigEndian.PutUint32(b[0:4], k.EndpointID)
	binary.BigEndian.PutUint16(b[4:6], k.Port)
	b[6] = uint8(k.Direction)
	h.Write(b[:])
	h.Write([]byte(k.Parser))
	span := uint32(ps.max) - uint32(ps.min) + 1
	return uint16(uint32(ps.min) + h.Sum32()%span)
}

// candidates calls try with each free port in k's order of preference
// until try accepts one (returns true); it reports the port, or 0 when
// none was accepted.
func (ps *ports) candidates(k RedirectKey, try func(port uint16) bool) uint16 {
	span := uint32(ps.max) - uint32(ps.min) + 1
	first := uint32(ps.preferred(k) - ps.min)
	for i := range span {
		port := uint16(uint32(ps.min) + (first+i)%span)
		if _, taken := ps.used[port]; taken {
			continue
		}
		if try(port) {
			ps.used[port] = k
			return port
		}
	}
	return 0
}

func (ps *ports) release(port uint16) { delete(ps.used, port) }
