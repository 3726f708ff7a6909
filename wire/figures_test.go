package wire

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
)

// TestFiguresServiceValueBytes reports how large the value of a service
// with 10,000 backends is, in the shapes Cilium publishes, against
// MaxValueBytes: the figure that decides the limit. (`make bench`; wire's
// tests import only the standard library, so not internal/figure.)
func TestFiguresServiceValueBytes(t *testing.T) {
	if os.Getenv("CLUSTERMESH_BENCH") != "1" {
		t.Skip("benchmark figures run with `make bench` (CLUSTERMESH_BENCH=1)")
	}
	const backends = 10_000
	for _, shape := range []struct {
		name         string
		v6           bool
		ports        []string
		zones, hosts bool
	}{
		{"ipv4.1port", false, []string{"http"}, false, false},
		{"ipv4.2ports", false, []string{"http", "metrics"}, false, false},
		{"ipv6.1port", true, []string{"http"}, false, false},
		{"ipv4.1port.zones", false, []string{"http"}, true, false},
		{"ipv6.2ports.zones.hostnames", true, []string{"http", "metrics"}, true, true},
	} {
		s := &ClusterService{Cluster: "cluster-name-1", Namespace: "production-shop", Name: "checkout-frontend", ClusterID: 17, Shared: true,
			Frontends: map[string]PortConfiguration{"10.96.100.200": {}, "fd00:10:96::c8": {}},
			Backends:  make(map[string]PortConfiguration, backends),
			Labels:    map[string]string{"app.kubernetes.io/name": "checkout", "app.kubernetes.io/part-of": "shop"},
			Selector:  map[string]string{"app.kubernetes.io/name": "checkout"}}
		for i, p := range shape.ports {
			for _, pc := range s.Frontends {
				pc[p] = &L4Addr{Protocol: "TCP", Port: uint16(80 + i)}
			}
		}
		if shape.zones {
			s.Zones = map[string]BackendZone{}
		}
		if shape.hosts {
			s.Hostnames = map[string]string{}
		}
		for i := range backends {
			a := netip.AddrFrom4([4]byte{10, byte(100 + i>>16), byte(i >> 8), byte(i)})
			if shape.v6 {
				a = netip.MustParseAddr(fmt.Sprintf("fd00:10:244:%x::%x", i>>8, 0x1000+i))
			}
			pc := PortConfiguration{}
			for j, p := range shape.ports {
				pc[p] = &L4Addr{Protocol: "TCP", Port: uint16(8080 + j)}
			}
			s.Backends[a.String()] = pc
			if shape.zones {
				s.Zones[a.String()] = BackendZone{Zone: "europe-west1-b", ForZones: []ForZone{{Name: "europe-west1-b"}}}
			}
			if shape.hosts {
				s.Hostnames[a.String()] = fmt.Sprintf("checkout-frontend-7d9f8c6b5-%05d", i)
			}
		}
		v, err := EncodeService(s)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Printf("FIGURE wire.service_value.%dk_backends.%s %d bytes\n", backends/1000, shape.name, len(v))
		t.Logf("%s: %d bytes, %.2f × MaxValueBytes", shape.name, len(v), float64(len(v))/MaxValueBytes)
	}
}
