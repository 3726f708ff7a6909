package wireguard

import "net/netip"

// claim is who holds a prefix.
type claim struct {
	label string
	pod   bool   // a remote pod CIDR
	owner string // the peer's id, "" for local claims
}

// prefixTrie is a binary trie of claimed prefixes: find answers "does any
// claimed prefix overlap p" in O(prefix length), so validating n peers costs
// O(n), not O(n²).
type prefixTrie struct{ root [2]*trieNode } // IPv4, IPv6

type trieNode struct {
	child [2]*trieNode
	claim *claim
	count int // insertions at or below this node
}

func family(a netip.Addr) int {
	if a.Is4() {
		return 0
	}
	return 1
}

func bitAt(a netip.Addr, i int) int {
	if a.Is4() {
		b := a.As4()
		return int(b[i/8]>>(7-i%8)) & 1
	}
	b := a.As16()
	return int(b[i/8]>>(7-i%8)) & 1
}

func (t *prefixTrie) insert(p netip.Prefix, c *claim) {
	f := family(p.Addr())
	if t.root[f] == nil {
		t.root[f] = &trieNode{}
	}
	n := t.root[f]
	n.count++
	for i := 0; i < p.Bits(); i++ {
		b := bitAt(p.Addr(), i)
		if n.child[b] == nil {
			n.child[b] = &trieNode{}
		}
		n = n.child[b]
		n.count++
	}
	n.claim = c
}

// find returns a claim overlapping p (one containing p, or contained in it).
func (t *prefixTrie) find(p netip.Prefix) *claim {
	n := t.root[family(p.Addr())]
	for i := 0; n != nil; i++ {
		if n.claim != nil {
			return n.claim
		}
		if i == p.Bits() {
			if n.count == 0 {
				return nil
			}
			for n.claim == nil {
				if c := n.child[0]; c != nil && c.count > 0 {
					n = c
				} else {
					n = n.child[1]
				}
			}
			return n.claim
		}
		n = n.child[bitAt(p.Addr(), i)]
	}
	return nil
}
