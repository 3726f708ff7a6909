// Package loglimit bounds how often one kind of log line is written: a
// remote publishing a million bad keys, or a full map failing every write of
// a burst, must not flood the log. What is not written is counted and
// reported with the next line that is.
package loglimit

import "time"

// Keyed limits log lines per key (a reason, an operation) to one per
// interval. The zero value is not usable: create with New. Not safe for
// concurrent use: the caller's lock guards it.
type Keyed struct {
	every time.Duration
	keys  map[string]*state
}

type state struct {
	last       time.Time
	suppressed uint64
}

// New returns a limiter allowing one line per key per every.
func New(every time.Duration) *Keyed {
	return &Keyed{every: every, keys: map[string]*state{}}
}

// Allow reports whether a line for key may be written at now, and how many
// were suppressed since the last one written (reset when allowed).
func (k *Keyed) Allow(key string, now time.Time) (ok bool, suppressed uint64) {
	s := k.keys[key]
	if s == nil {
		s = &state{}
		k.keys[key] = s
	}
	if now.Sub(s.last) < k.every {
		s.suppressed++
		return false, 0
	}
	suppressed, s.suppressed, s.last = s.suppressed, 0, now
	return true, suppressed
}
