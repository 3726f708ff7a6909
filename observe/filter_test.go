package observe

import (
	"net/url"
	"strings"
	"testing"
)

func TestFilterSet(t *testing.T) {
	for _, tc := range []struct {
		key, value string
		want       Filter
		err        string // substring of the error; "" for none
	}{
		{"verdict", "dropped", Filter{Verdict: "DROPPED"}, ""},
		{"verdict", "FORWARDED", Filter{Verdict: "FORWARDED"}, ""},
		{"verdict", "DROPED", Filter{}, `verdict "DROPED": want FORWARDED or DROPPED`},
		{"from-cluster", "west", Filter{FromCluster: "west"}, ""},
		{"to-cluster", "East", Filter{}, `to-cluster "East": not a cluster name`},
		{"from-pod", "checkout", Filter{FromPod: "checkout"}, ""},
		{"to-pod", "shop/checkout-0", Filter{ToPod: "shop/checkout-0"}, ""},
		{"to-pod", "shop/", Filter{}, "want POD or NAMESPACE/POD"},
		{"to-pod", "/checkout", Filter{}, "want POD or NAMESPACE/POD"},
		{"from-pod", "a/b/c", Filter{}, "want POD or NAMESPACE/POD"},
		{"namespace", "shop", Filter{Namespace: "shop"}, ""},
		{"namespace", "shop/x", Filter{}, "use from-pod or to-pod"},
		{"protocol", "udp", Filter{Protocol: "UDP"}, ""},
		{"protocol", "icmpv6", Filter{Protocol: "ICMPv6"}, ""},
		{"protocol", "http", Filter{}, "want one of TCP, UDP, SCTP, ICMP, ICMPv6"},
		{"identity", "70001", Filter{Identity: 70001}, ""},
		{"identity", "0", Filter{}, "want a numeric security identity"},
		{"identity", "-3", Filter{}, "want a numeric security identity"},
		{"colour", "red", Filter{}, `unknown filter "colour"`},
		{"verdict", "", Filter{}, ""},
	} {
		var f Filter
		err := f.Set(tc.key, tc.value)
		switch {
		case tc.err == "" && err != nil:
			t.Errorf("Set(%q, %q): %v", tc.key, tc.value, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("Set(%q, %q) = %v, want an error with %q", tc.key, tc.value, err, tc.err)
		case tc.err != "" && !strings.HasPrefix(err.Error(), tc.key+" ") && !strings.HasPrefix(err.Error(), "unknown filter "):
			t.Errorf("Set(%q, %q): error %q does not start with the key (the CLI names its flag with it)", tc.key, tc.value, err)
		case err == nil && f != tc.want:
			t.Errorf("Set(%q, %q) = %+v, want %+v", tc.key, tc.value, f, tc.want)
		}
	}
}

// testFlow is a dropped TCP flow from west/shop/frontend-1 to
// east/shop/checkout-0.
func testFlow() Flow {
	return Flow{
		Verdict: VerdictDropped, DropReason: "policy-denied", Direction: "egress", Protocol: "TCP",
		Source:      Endpoint{Cluster: "west", Namespace: "shop", Pod: "frontend-1", Identity: 132000, IP: "10.2.1.5", Port: 41234},
		Destination: Endpoint{Cluster: "east", Namespace: "pay", Pod: "checkout-0", Identity: 70001, IP: "10.1.1.11", Port: 8080},
	}
}

func TestFilterMatch(t *testing.T) {
	fl := testFlow()
	world := testFlow()
	world.Destination = Endpoint{Identity: 2, IP: "192.0.2.1", Port: 443}
	for _, tc := range []struct {
		q    string
		flow *Flow
		want bool
	}{
		{"", &fl, true},
		{"verdict=DROPPED", &fl, true},
		{"verdict=forwarded", &fl, false},
		{"from-cluster=west&to-cluster=east", &fl, true},
		{"from-cluster=east", &fl, false},
		{"to-cluster=west", &fl, false},
		{"from-pod=frontend", &fl, true},                  // prefix, any namespace
		{"from-pod=shop/frontend-1", &fl, true},           // namespaced
		{"from-pod=pay/frontend-1", &fl, false},           // other namespace
		{"to-pod=pay/checkout", &fl, true},                // prefix in namespace
		{"to-pod=checkout-1", &fl, false},                 // other pod
		{"to-pod=checkout", &world, false},                // no pod at all
		{"namespace=pay", &fl, true},                      // destination's
		{"namespace=shop", &fl, true},                     // source's
		{"namespace=kube-system", &fl, false},             // neither
		{"protocol=tcp", &fl, true},                       // any case
		{"protocol=UDP", &fl, false},                      //
		{"identity=70001", &fl, true},                     // either end
		{"identity=132000", &fl, true},                    //
		{"identity=2", &fl, false},                        //
		{"identity=2", &world, true},                      //
		{"verdict=DROPPED&from-cluster=east", &fl, false}, // ANDed
		{"verdict=DROPPED&from-cluster=west&to-pod=pay/checkout-0&protocol=TCP&namespace=pay&identity=2", &world, false},
	} {
		q, err := url.ParseQuery(tc.q)
		if err != nil {
			t.Fatal(err)
		}
		f, err := FilterFromQuery(q)
		if err != nil {
			t.Fatalf("FilterFromQuery(%q): %v", tc.q, err)
		}
		if got := f.Match(tc.flow); got != tc.want {
			t.Errorf("filter %q (%s) matched %v, want %v", tc.q, f, got, tc.want)
		}
	}
}

func TestFilterQuery(t *testing.T) {
	f := Filter{Verdict: VerdictDropped, FromCluster: "west", ToCluster: "east", FromPod: "frontend", ToPod: "shop/checkout",
		Namespace: "shop", Protocol: "TCP", Identity: 70001}
	got, err := FilterFromQuery(f.Query())
	if err != nil || got != f {
		t.Fatalf("round trip: %+v, %v; want %+v", got, err, f)
	}
	if s := f.String(); s != "verdict=DROPPED from-cluster=west to-cluster=east from-pod=frontend to-pod=shop/checkout namespace=shop protocol=TCP identity=70001" {
		t.Errorf("String() = %q", s)
	}
	if s := (Filter{}).String(); s != "all" {
		t.Errorf("zero String() = %q", s)
	}
	for q, want := range map[string]string{
		"verdict=DROPPED&verdict=FORWARDED": "verdict given 2 times",
		"pod=x":                             `unknown filter "pod"`,
		"verdict=DROPED":                    "want FORWARDED or DROPPED",
	} {
		v, _ := url.ParseQuery(q)
		if _, err := FilterFromQuery(v); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("FilterFromQuery(%q) = %v, want an error with %q", q, err, want)
		}
	}
}

// FuzzFilterQuery: any query string either fails to decode or decodes to a
// filter that encodes back to itself and matches without panicking.
func FuzzFilterQuery(f *testing.F) {
	for _, s := range []string{
		"", "verdict=DROPPED", "from-cluster=west&to-pod=shop/checkout", "protocol=icmpv6&identity=70001",
		"namespace=a%2Fb", "last=3&follow=1", "to-pod=%2F", "identity=4294967296", "from-pod=a/b/c",
	} {
		f.Add(s)
	}
	fl := testFlow()
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := url.ParseQuery(raw)
		if err != nil {
			return
		}
		flt, last, follow, err := parseRequest(q)
		if err != nil {
			return
		}
		again, err := FilterFromQuery(flt.Query())
		if err != nil || again != flt {
			t.Fatalf("%q: decoded %+v, re-encoded and decoded %+v, %v", raw, flt, again, err)
		}
		rq, err := url.ParseQuery(RequestQuery(flt, last, follow))
		if err != nil {
			t.Fatal(err)
		}
		f2, last2, follow2, err := parseRequest(rq)
		if err != nil || f2 != flt || last2 != last || follow2 != follow {
			t.Fatalf("%q: request round trip: %+v %d %v, %v", raw, f2, last2, follow2, err)
		}
		flt.Match(&fl)
	})
}
