package enforcer

import (
	"errors"
	"maps"
	"testing"
	"time"

	"github.com/clustermesh/clustermesh/datapath/tcpolicy"
	"github.com/clustermesh/clustermesh/internal/testenv"
)

// TestAuditNamespaces: the endpoints of an audited namespace are attached
// in audit mode, and say so in status; others are not.
func TestAuditNamespaces(t *testing.T) {
	for _, c := range []struct {
		namespaces map[string]bool
		audit      bool
	}{
		{map[string]bool{"shop": true}, true},
		{map[string]bool{AuditAll: true}, true},
		{map[string]bool{"payments": true}, false},
		{nil, false},
	} {
		f := startCfg(t, func(_ *fixture, cfg *Config) { cfg.AuditNamespaces = c.namespaces }, nil)
		f.writePolicy(t, "checkout.yaml", checkoutPolicy)
		f.e.SetLocalState(localState())
		f.e.UpsertIdentity("east", eastCheckout, podLabels("east", "checkout"))
		close(f.ready)
		want := tcpolicy.Endpoint{Identity: eastCheckout, EnforceIngress: true, Audit: c.audit}
		testenv.WaitFor(t, 5*time.Second, "checkout-2 attached", func() bool {
			p, ok := f.att.get(7)
			return ok && p == want
		})
		for _, ep := range f.e.Status().Endpoints {
			if ep.Pod == "checkout-2" && ep.Audit != c.audit {
				t.Errorf("audit namespaces %v: status %+v", c.namespaces, ep)
			}
		}
	}
}

func TestParseAuditNamespaces(t *testing.T) {
	for in, want := range map[string]map[string]bool{
		"":                 nil,
		" ":                nil,
		"shop":             {"shop": true},
		"shop, payments":   {"shop": true, "payments": true},
		"*":                {"*": true},
		"kube-system,shop": {"kube-system": true, "shop": true},
	} {
		got, err := ParseAuditNamespaces(in)
		if err != nil || !maps.Equal(got, want) {
			t.Errorf("ParseAuditNamespaces(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"Shop", "shop,", "a_b", "shop,*x"} {
		if _, err := ParseAuditNamespaces(in); !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("ParseAuditNamespaces(%q): %v, want ErrInvalidConfig", in, err)
		}
	}
	cfg := Config{ClusterName: "east", NodeName: "n", Policy: tcpolicy.NewMemory(), AuditNamespaces: map[string]bool{"Bad": true}}
	cfg.withDefaults()
	if err := cfg.Validate(); !errors.Is(err, ErrInvalidConfig) {
		t.Errorf("Validate with an invalid audit namespace: %v", err)
	}
}

// FuzzParseAuditNamespaces: any list parses or is refused with
// ErrInvalidConfig; what parses validates, and holds only names and "*".
func FuzzParseAuditNamespaces(f *testing.F) {
	for _, s := range []string{"", "shop", "shop, payments", "*", "Shop", "a,,b", "kube-system,*"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, list string) {
		got, err := ParseAuditNamespaces(list)
		if err != nil {
			if !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("error %v does not wrap ErrInvalidConfig", err)
			}
			return
		}
		cfg := Config{ClusterName: "east", NodeName: "n", Policy: tcpolicy.NewMemory(), AuditNamespaces: got}
		cfg.withDefaults()
		if err := cfg.Validate(); err != nil {
			t.Fatalf("%q parsed to %v, which does not validate: %v", list, got, err)
		}
	})
}
