// Package fqdn owns DNS names as policy sees them: Cilium's name selectors
// (`matchName`, `matchPattern`) compiled into matchers, and the cache of
// names to the addresses that allowed DNS answers returned, each for its TTL
// (with a minimum), bounded in names and addresses per name, telling its
// subscribers (the enforcer's `toFQDNs` selectors) which addresses a
// selector gained and lost.
//
// The DNS proxy (package l7dns) puts an allowed answer's addresses into the
// Cache before it releases the answer to the client, and subscribers are
// told synchronously from that call: an FQDN policy allows an address by the
// time the client can connect to it.
package fqdn

import "errors"

// The errors of this package; wrapped with the selector or value at fault.
var (
	// ErrEmptySelector: a selector with neither matchName nor matchPattern.
	ErrEmptySelector = errors.New(`set matchName or matchPattern (matchPattern "*" selects every name)`)
	// ErrBothSet: a selector with both matchName and matchPattern.
	ErrBothSet = errors.New("set only one of matchName and matchPattern")
	// ErrTooLong: a name or pattern over 255 characters.
	ErrTooLong = errors.New("longer than 255 characters")
	// ErrBadChars: a character DNS names do not have.
	ErrBadChars = errors.New("only 0-9, a-z, A-Z, '.', '-', '_' (and '*' in matchPattern) are allowed")
	// ErrConfig: an invalid Config field.
	ErrConfig = errors.New("invalid fqdn cache config")
)
