package l7http

import (
	"errors"
	"sync/atomic"
	"testing"
)

func TestNormalizeTarget(t *testing.T) {
	for in, want := range map[string]string{
		"/v1/cart?id=1":          "/v1/cart?id=1",
		"/public/../admin":       "/admin",
		"/public/%2e%2E/admin":   "/admin",
		"/a/./b/":                "/a/b/",
		"/a/b/..":                "/a/",
		"/..":                    "/",
		"//a///b":                "/a/b",
		"/%7Euser/%41%62":        "/~user/Ab",
		"/a%20b%c3%a9":           "/a%20b%C3%A9",
		"/a?x=/../%zz":           "/a?x=/../%zz",
		"/a/%2e%2e%2f..?q":       "",
		"/a%2Fb":                 "",
		"/a%5cb":                 "",
		"/a%":                    "",
		"/a%4":                   "",
		"/a%g0":                  "",
		"/public/.%2e/%2e/admin": "/admin",
	} {
		got, err := normalizeTarget(in)
		if want == "" {
			if !errors.Is(err, ErrMalformed) {
				t.Errorf("%q: %q, %v; want refused", in, got, err)
			}
			continue
		}
		if err != nil || got != want {
			t.Errorf("%q: %q, %v; want %q", in, got, err, want)
		}
		if again, _ := normalizeTarget(got); again != got {
			t.Errorf("%q normalizes to %q, then to %q", in, got, again)
		}
	}
}

// TestPathRulesSeeTheNormalizedPath: dot segments and encodings cannot walk
// a request past a path rule; the server gets the path the rule judged.
func TestPathRulesSeeTheNormalizedPath(t *testing.T) {
	var served atomic.Int64
	h := newHarness(t, Config{}, []PortRuleHTTP{{Path: "/public/.*"}}, echo(&served))
	c := h.dialRaw()
	for target, code := range map[string]int{"/public/../admin": 403, "/public/%2e%2e/admin": 403, "/public//x/../y": 200} {
		c.send(t, "GET "+target+" HTTP/1.1\r\nHost: a\r\n\r\n")
		resp, body := c.response(t, "GET")
		if resp.StatusCode != code {
			t.Fatalf("%s: %d, want %d", target, resp.StatusCode, code)
		}
		if code == 200 && body != "GET /public/y " {
			t.Fatalf("%s reached the server as %q", target, body)
		}
	}
	c.send(t, "GET /public/%2fadmin HTTP/1.1\r\nHost: a\r\n\r\n")
	if resp, _ := c.response(t, "GET"); resp.StatusCode != 400 {
		t.Fatalf("escaped slash: %d", resp.StatusCode)
	}
}
