package wire

import (
	"errors"
	"net/netip"
	"testing"
)

func TestHubbleAddress(t *testing.T) {
	ip := netip.MustParseAddr("10.0.0.7")
	tests := []struct {
		name    string
		node    Node
		want    string
		wantErr bool
	}{
		{"default port on the first InternalIP", Node{IPAddresses: []NodeAddress{{Type: ExternalIP, IP: netip.MustParseAddr("1.2.3.4")}, {Type: InternalIP, IP: ip}}}, "10.0.0.7:4244", false},
		{"IPv6", Node{IPAddresses: []NodeAddress{{Type: InternalIP, IP: netip.MustParseAddr("fd00::7")}}}, "[fd00::7]:4244", false},
		{"annotation wins", Node{IPAddresses: []NodeAddress{{Type: InternalIP, IP: ip}}, Annotations: map[string]string{AnnotationHubbleAddress: "hubble.east:9000"}}, "hubble.east:9000", false},
		{"invalid annotation", Node{IPAddresses: []NodeAddress{{Type: InternalIP, IP: ip}}, Annotations: map[string]string{AnnotationHubbleAddress: "10.0.0.7"}}, "", true},
		{"no address", Node{}, "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := HubbleAddress(&tt.node)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("HubbleAddress = %q, %v; want %q (error %v)", got, err, tt.want, tt.wantErr)
			}
			if err != nil && !errors.Is(err, ErrInvalidAddress) {
				t.Fatalf("error %v does not wrap ErrInvalidAddress", err)
			}
		})
	}
}

func TestCheckHubbleAddress(t *testing.T) {
	for s, ok := range map[string]bool{
		"10.0.0.1:4244": true, "[fd00::1]:4244": true, "node-1.example:1": true,
		"10.0.0.1": false, ":4244": false, "10.0.0.1:0": false, "10.0.0.1:65536": false,
		"10.0.0.1:http": false, "[fe80::1%eth0]:4244": false, "": false,
	} {
		if err := CheckHubbleAddress(s); (err == nil) != ok {
			t.Errorf("CheckHubbleAddress(%q) = %v, want ok=%v", s, err, ok)
		}
	}
}

func FuzzCheckHubbleAddress(f *testing.F) {
	for _, s := range []string{"10.0.0.1:4244", "[fd00::1]:4244", "a:1", "", ":", "[::1%lo]:1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if CheckHubbleAddress(s) != nil {
			return
		}
		n := Node{Annotations: map[string]string{AnnotationHubbleAddress: s}}
		if got, err := HubbleAddress(&n); err != nil || got != s {
			t.Fatalf("accepted %q but HubbleAddress = %q, %v", s, got, err)
		}
	})
}
