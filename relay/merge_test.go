package relay

import (
	"testing"
	"time"
)

func fr(at int64) frame { return frame{at: at} }

// With every open stream holding a response, the oldest leaves at once; a
// quiet stream holds the others back for the window only; more than max
// waiting lets the oldest go.
func TestMergeRules(t *testing.T) {
	now := time.Unix(1000, 0)
	m := newMerge(3, time.Second)
	a, b := &source{}, &source{}
	m.open(a)
	m.open(b)
	m.push(a, fr(10), now)
	m.push(a, fr(30), now)
	if _, ok := m.next(now); ok {
		t.Fatal("released while b has nothing waiting and the window is not over")
	}
	m.push(b, fr(20), now)
	var got []int64
	for f, ok := m.next(now); ok; f, ok = m.next(now) {
		got = append(got, f.at)
	}
	// 10 and 20 leave (both streams had one waiting); then b is empty.
	if len(got) != 2 || got[0] != 10 || got[1] != 20 {
		t.Fatalf("k-way release %v, want [10 20]", got)
	}
	if f, ok := m.next(now.Add(time.Second)); !ok || f.at != 30 {
		t.Fatalf("after the window: %v %v, want 30", f.at, ok)
	}
	for i := range 4 {
		m.push(a, fr(int64(40+i)), now)
	}
	if f, ok := m.next(now); !ok || f.at != 40 {
		t.Fatalf("over max: %v %v, want 40", f.at, ok)
	}
	if _, ok := m.next(now); ok {
		t.Fatal("released with 3 waiting (max 3) inside the window")
	}
	m.close(b) // b ends: only a is open, and it has flows
	if f, ok := m.next(now); !ok || f.at != 41 {
		t.Fatalf("after b ended: %v %v, want 41", f.at, ok)
	}
}

func TestBounded(t *testing.T) {
	last, first := &bounded{n: 3}, &bounded{n: 3, first: true}
	for _, at := range []int64{5, 1, 9, 3, 7, 2} {
		last.add(fr(at))
		first.add(fr(at))
	}
	check := func(name string, got []frame, want ...int64) {
		if len(got) != len(want) {
			t.Fatalf("%s: %v, want %v", name, got, want)
		}
		for i := range got {
			if got[i].at != want[i] {
				t.Fatalf("%s: %v, want %v", name, got, want)
			}
		}
	}
	check("last 3", last.sorted(), 5, 7, 9)
	check("first 3", first.sorted(), 1, 2, 3)
}
