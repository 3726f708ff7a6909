package l7http

import (
	"encoding/json"
	"errors"
	"testing"
)

func TestPolicyMatchesLikeCilium(t *testing.T) {
	var rules []PortRuleHTTP
	if err := json.Unmarshal([]byte(`[
		{"method": "GET", "path": "/v1/.*"},
		{"method": "POST|PUT", "path": "/v1/cart", "host": "checkout(:8080)?", "headers": ["X-Token: abc", "X-Trace"]},
		{"path": "/admin", "headerMatches": [{"name": "x-role", "value": "admin"}]}
	]`), &rules); err != nil {
		t.Fatal(err)
	}
	p, err := NewPolicy(rules)
	if err != nil {
		t.Fatal(err)
	}
	req := func(method, target, host string, hs ...string) *requestHead {
		r := &requestHead{method: method, target: target, host: host}
		for i := 0; i+1 < len(hs); i += 2 {
			r.headers = append(r.headers, header{hs[i], hs[i+1]})
		}
		return r
	}
	for _, tc := range []struct {
		name string
		req  *requestHead
		want bool
	}{
		{"GET under /v1/", req("GET", "/v1/cart?id=1", "x"), true},
		{"method anchored", req("GETX", "/v1/cart", "x"), false},
		{"path anchored", req("GET", "/api/v1/cart", "x"), false},
		{"POST with every header", req("POST", "/v1/cart", "checkout:8080", "x-token", "abc", "X-Trace", ""), true},
		{"PUT, host without port", req("PUT", "/v1/cart", "checkout", "X-Token", "abc", "X-Trace", "1"), true},
		{"wrong header value", req("POST", "/v1/cart", "checkout", "X-Token", "abcd", "X-Trace", "1"), false},
		{"missing header", req("POST", "/v1/cart", "checkout", "X-Token", "abc"), false},
		{"other host", req("POST", "/v1/cart", "evil", "X-Token", "abc", "X-Trace", "1"), false},
		{"path with query is not the path", req("POST", "/v1/cart?x", "checkout", "X-Token", "abc", "X-Trace", "1"), false},
		{"headerMatches", req("DELETE", "/admin", "x", "X-Role", "admin"), true},
		{"headerMatches value", req("DELETE", "/admin", "x", "X-Role", "user"), false},
	} {
		if got := p.allows(tc.req); got != tc.want {
			t.Errorf("%s: allowed %v, want %v", tc.name, got, tc.want)
		}
	}
	if err := p.Update([]PortRuleHTTP{{}}); err != nil || !p.allows(req("DELETE", "/x", "y")) {
		t.Fatalf("an empty rule (http: [{}]) allows every request: %v", err)
	}
	var nilPolicy *Policy
	if !nilPolicy.allows(req("GET", "/", "")) {
		t.Fatal("no policy allows")
	}
}

func TestInvalidRulesRefused(t *testing.T) {
	p, _ := NewPolicy([]PortRuleHTTP{{Method: "GET"}})
	for _, r := range []PortRuleHTTP{
		{Path: "/v1/(unclosed"},
		{Headers: []string{": x"}},
		{HeaderMatches: []*HeaderMatch{{Name: "X", Mismatch: "LOG"}}},
		{HeaderMatches: []*HeaderMatch{{Name: "X", Secret: &map[string]any{"name": "s"}}}},
	} {
		if err := p.Update([]PortRuleHTTP{r}); !errors.Is(err, ErrInvalidRule) {
			t.Errorf("%+v: %v, want ErrInvalidRule", r, err)
		}
	}
	if p.allows(&requestHead{method: "POST"}) {
		t.Fatal("a refused update replaced the rules")
	}
}
