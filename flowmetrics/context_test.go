package flowmetrics

import (
	"slices"
	"testing"
)

// FuzzLabelKey: a label set's key gives back its values, and two label sets
// have the same key only if they are the same.
func FuzzLabelKey(f *testing.F) {
	f.Add("shop", "frontend", "", "shop/frontend", "")
	f.Add("a\x00\x00\x00\x00", "", "b", "a", "\x00\x00\x00\x00b")
	f.Fuzz(func(t *testing.T, a, b, c, d, e string) {
		key := func(vs ...string) []byte {
			var k []byte
			for _, v := range vs {
				k = appendValue(k, v)
			}
			return k
		}
		k1, k2 := key(a, b, c), key(d, e)
		if got := splitKey(k1); !slices.Equal(got, []string{a, b, c}) {
			t.Fatalf("splitKey(key(%q, %q, %q)) = %q", a, b, c, got)
		}
		if string(k1) == string(key(a, b+c)) && c != "" {
			t.Fatalf("(%q, %q, %q) and (%q, %q) have the same key", a, b, c, a, b+c)
		}
		if (string(key(a, b)) == string(k2)) != (a == d && b == e) {
			t.Fatalf("key(%q, %q) == key(%q, %q) is %v", a, b, d, e, string(key(a, b)) == string(k2))
		}
	})
}
