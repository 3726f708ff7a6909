package statesource

import "testing"

// FuzzParse: no input crashes the state file parser, and an accepted state
// validates.
func FuzzParse(f *testing.F) {
	f.Add([]byte(good))
	f.Add([]byte("nodes: [{name: a, ips: ['::1'], podCIDRs: ['fd00::/64']}]"))
	f.Add([]byte("nodes: [{name: a, ips: ['1.1.1.1'], annotations: {clustermesh.io/hubble-address: 'a:1', b: c}}]"))
	f.Add([]byte("services: [{namespace: a, name: b, ports: [{port: 65535, protocol: udp}]}]"))
	f.Fuzz(func(t *testing.T, b []byte) {
		st, err := Parse("fuzz", b)
		if err != nil {
			return
		}
		if err := st.Validate(); err != nil {
			t.Fatalf("accepted a state that does not validate: %v", err)
		}
		for i := range st.Services {
			st.Backends(&st.Services[i])
		}
	})
}
