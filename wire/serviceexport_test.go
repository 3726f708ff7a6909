package wire

import (
	"errors"
	"reflect"
	"testing"
	"time"
)

// ciliumExport is an export spec as Cilium v1.20 writes it (MCSAPIServiceSpec.Marshal).
const ciliumExport = `{"cluster":"west","name":"checkout","namespace":"shop","annotations":{"a":"1"},"Annotations":{"a":"1"},` +
	`"exportCreationTimestamp":"2026-12-05T14:32:28Z","ports":[{"name":"http","protocol":"TCP","port":8080}],` +
	`"type":"ClusterSetIP","sessionAffinity":"None","ipFamilies":["IPv4"]}`

func TestServiceExportRoundTrip(t *testing.T) {
	west := Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	key := ServiceExportKey("west", "shop", "checkout")
	if key != "cilium/state/serviceexports/v1/west/shop/checkout" {
		t.Fatalf("key %q", key)
	}
	s, err := DecodeServiceExport(west, key, []byte(ciliumExport))
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 12, 5, 14, 32, 28, 0, time.UTC)
	if !s.ExportCreationTimestamp.Equal(want) || s.Annotations["a"] != "1" || s.LegacyAnnotations != nil || s.Type != ImportClusterSetIP || len(s.Ports) != 1 {
		t.Fatalf("decoded %+v", s)
	}
	v, err := EncodeServiceExport(s)
	if err != nil {
		t.Fatal(err)
	}
	again, err := DecodeServiceExport(west, key, v)
	if err != nil || !reflect.DeepEqual(again, s) {
		t.Fatalf("re-decoded %+v, %v; want %+v", again, err, s)
	}
	// Legacy fields only (an older Cilium).
	old := `{"cluster":"west","name":"checkout","namespace":"shop","Labels":{"l":"v"},"exportCreationTimestamp":"2026-12-05T14:32:28Z","ports":[],"type":"Headless","sessionAffinity":"None"}`
	if s, err := DecodeServiceExport(west, key, []byte(old)); err != nil || s.Labels["l"] != "v" {
		t.Fatalf("legacy labels: %+v, %v", s, err)
	}
}

func TestServiceExportRejects(t *testing.T) {
	west := Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	key := ServiceExportKey("west", "shop", "checkout")
	for name, tc := range map[string]struct {
		key, value string
		err        error
	}{
		"other cluster":  {key, `{"cluster":"east","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"None"}`, ErrClusterMismatch},
		"key disagrees":  {key, `{"cluster":"west","name":"cart","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"None"}`, ErrClusterMismatch},
		"no timestamp":   {key, `{"cluster":"west","name":"checkout","namespace":"shop","type":"Headless","sessionAffinity":"None"}`, ErrMalformedValue},
		"bad type":       {key, `{"cluster":"west","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"LoadBalancer","sessionAffinity":"None"}`, ErrMalformedValue},
		"bad affinity":   {key, `{"cluster":"west","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"Sticky"}`, ErrMalformedValue},
		"port twice":     {key, `{"cluster":"west","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"None","ports":[{"protocol":"TCP","port":80},{"protocol":"TCP","port":80}]}`, ErrMalformedValue},
		"port range":     {key, `{"cluster":"west","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"None","ports":[{"protocol":"TCP","port":0}]}`, ErrMalformedValue},
		"bad protocol":   {key, `{"cluster":"west","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"None","ports":[{"protocol":"ICMP","port":1}]}`, ErrMalformedValue},
		"not json":       {key, `{`, ErrMalformedValue},
		"key of another": {ServiceExportKey("east", "shop", "checkout"), ciliumExport, ErrMalformedKey},
		"short key":      {"cilium/state/serviceexports/v1/west/checkout", ciliumExport, ErrMalformedKey},
	} {
		if _, err := DecodeServiceExport(west, tc.key, []byte(tc.value)); !errors.Is(err, tc.err) {
			t.Errorf("%s: got %v, want %v", name, err, tc.err)
		}
	}
}

func FuzzDecodeServiceExport(f *testing.F) {
	f.Add("shop/checkout", []byte(ciliumExport))
	f.Add("shop/checkout", []byte(`{"cluster":"west","name":"checkout","namespace":"shop","exportCreationTimestamp":"2026-12-05T14:32:28Z","type":"Headless","sessionAffinity":"ClientIP","sessionAffinityConfig":{"clientIP":{"timeoutSeconds":10}},"ports":[{"name":"a","protocol":"UDP","port":53,"appProtocol":"dns"}]}`))
	f.Add("a/b", []byte(`{"cluster":"west"}`))
	f.Add("../b", []byte(`null`))
	west := Cluster{Name: "west", ID: 2, MaxConnectedClusters: 255}
	f.Fuzz(func(t *testing.T, suffix string, value []byte) {
		key := ServiceExports.ListPrefix("west") + suffix
		s, err := DecodeServiceExport(west, key, value)
		if err != nil {
			if Reason(err) == "other" {
				t.Fatalf("error without a reason: %v", err)
			}
			return
		}
		v, err := EncodeServiceExport(s)
		if err != nil {
			t.Fatalf("encoding an accepted spec: %v", err)
		}
		again, err := DecodeServiceExport(west, key, v)
		if err != nil {
			t.Fatalf("re-decoding an accepted spec: %v", err)
		}
		if again.PortsKey() != s.PortsKey() || again.Type != s.Type || !again.ExportCreationTimestamp.Equal(s.ExportCreationTimestamp.Truncate(time.Second)) {
			t.Fatalf("re-decoded %+v from %+v", again, s)
		}
	})
}
