package wireguard

import (
	"fmt"
	"math"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/internal/figure"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestFigures prints the figures of issue 7 (make bench):
//
//   - wg.peers.seconds_for_1000: 1,000 remote nodes appear at once → their
//     1,000 peers and 1,000 routes are configured (SetPeers returns after
//     both); the median of 3 runs. Goal: ≤ 1 s.
//   - wg.throughput.ratio: TCP throughput between two namespaces through the
//     userspace device, divided by the throughput over the plain veth
//     underneath, measured in the same run (400 MiB and 2 GiB, best of 3
//     each: the machine is shared, the best run is the least disturbed).
func TestFigures(t *testing.T) {
	figure.Require(t)
	testenv.RequireRoot(t)

	t.Run("peers", func(t *testing.T) {
		n := newNS(t)
		dev, err := Open(Config{DeviceName: uniqueDevName(), PrivateKeyFile: t.TempDir() + "/k", NetNS: n.path, UnderlayMTU: 1500,
			LocalPodCIDRs: []netip.Prefix{pfx("172.16.0.0/24")}})
		if err != nil {
			t.Fatal(err)
		}
		defer dev.Close()
		const count = 1000
		peers := make([]Peer, count)
		for i := range peers {
			peers[i] = Peer{Cluster: fmt.Sprintf("c%d", i%8), Node: fmt.Sprintf("node-%04d", i),
				PublicKey: newKey(t), Endpoint: netip.AddrPortFrom(netip.AddrFrom4([4]byte{100, 64, byte(i >> 8), byte(i)}), 0),
				PodCIDRs: []netip.Prefix{netip.PrefixFrom(netip.AddrFrom4([4]byte{10, byte(i >> 8), byte(i), 0}), 24)}}
		}
		var runs []time.Duration
		for range 3 {
			start := time.Now()
			rej, err := dev.SetPeers(peers)
			elapsed := time.Since(start)
			if err != nil || len(rej) > 0 {
				t.Fatalf("SetPeers: %v %v", err, rej)
			}
			d, err := dev.wg.Device(dev.Name())
			if err != nil || len(d.Peers) != count {
				t.Fatalf("device has %d peers: %v", len(d.Peers), err)
			}
			if r := ourRoutes(t, n); len(r) != count {
				t.Fatalf("%d routes", len(r))
			}
			runs = append(runs, elapsed)
			// The handshakes SetPeers scheduled hold the device's
			// configuration lock while they run: let them finish first.
			testenv.WaitFor(t, 10*time.Second, "the scheduled handshakes", func() bool {
				dev.mu.Lock()
				defer dev.mu.Unlock()
				return len(dev.pending) == 0 && dev.nudgeTimer == nil && dev.nudging == 0
			})
			start = time.Now()
			extra := Peer{Cluster: "cx", Node: "one-more", PublicKey: newKey(t), Endpoint: netip.MustParseAddrPort("100.65.0.1:0"),
				PodCIDRs: []netip.Prefix{pfx("10.250.0.0/24")}}
			if _, err := dev.SetPeers(append(slices.Clone(peers), extra)); err != nil {
				t.Fatal(err)
			}
			t.Logf("1000 peers in %s; one more on top of them in %s", elapsed, time.Since(start))
			start = time.Now()
			if _, err := dev.SetPeers(nil); err != nil {
				t.Fatal(err)
			}
			t.Logf("all removed in %s", time.Since(start))
		}
		slices.Sort(runs)
		figure.Print("wg.peers.seconds_for_1000", round3(runs[1].Seconds()), "s")
	})

	t.Run("throughput", func(t *testing.T) {
		a, b := twoNodes(t, nil)
		connect(t, a, b)
		// Each transfer lasts about half a second or more: 400 MiB through
		// the tunnel, 2 GiB over the bare veth (a short one is all noise).
		const tunnelSize, vethSize = 400 << 20, 2 << 30
		var wg, veth float64 // best throughput, bit/s
		for range 3 {
			w := transfer(t, a, a.podIP, b, b.podIP, tunnelSize, nil)
			v := transfer(t, a, a.underlay, b, b.underlay, vethSize, nil)
			wg = max(wg, float64(tunnelSize)*8/w.Seconds())
			veth = max(veth, float64(vethSize)*8/v.Seconds())
			t.Logf("tunnel 400 MiB in %s, veth 2 GiB in %s", w.Round(time.Millisecond), v.Round(time.Millisecond))
		}
		t.Logf("best: WireGuard (userspace) %.2f Gbit/s; plain veth %.2f Gbit/s", wg/1e9, veth/1e9)
		figure.Print("wg.throughput.ratio", round3(wg/veth), "ratio")
		figure.Print("wg.throughput.tunnel_gbit_s", round3(wg/1e9), "Gbit/s")
		figure.Print("wg.throughput.veth_gbit_s", round3(veth/1e9), "Gbit/s")
	})
}

func round3(v float64) float64 { return math.Round(v*1000) / 1000 }
