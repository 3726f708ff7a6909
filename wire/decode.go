package wire

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"unicode/utf8"
)

// decodeJSON decodes one JSON value into v after the size and UTF-8 checks.
// Unknown fields are accepted (newer Cilium versions add fields); trailing data
// is not.
func decodeJSON(value []byte, v any) error {
	if err := checkSize(value); err != nil {
		return err
	}
	// Unmarshal (not a Decoder) also refuses trailing data, and is faster.
	if err := json.Unmarshal(value, v); err != nil {
		if Reason(err) != "other" {
			return err // a field's own validation failed: keep its reason
		}
		return fmt.Errorf("%w: %v", ErrMalformedValue, err)
	}
	return nil
}

// checkSize refuses values over MaxValueBytes or not UTF-8.
func checkSize(value []byte) error {
	if len(value) > MaxValueBytes {
		return fmt.Errorf("%w (%d bytes, limit %d)", ErrValueTooLarge, len(value), MaxValueBytes)
	}
	if !utf8.Valid(value) {
		return fmt.Errorf("%w (not UTF-8)", ErrMalformedValue)
	}
	return nil
}

// checkAddr accepts a valid address without an IPv6 zone; the zero Addr only
// when optional.
func checkAddr(what string, a netip.Addr, optional bool) error {
	if !a.IsValid() {
		if optional {
			return nil
		}
		return fmt.Errorf("%s: %w (missing)", what, ErrInvalidAddress)
	}
	if a.Zone() != "" {
		return fmt.Errorf("%s %s: %w (IPv6 zone not allowed)", what, a, ErrInvalidAddress)
	}
	return nil
}

// parseAddr parses s as an address without zone; it also accepts IPv4-mapped
// IPv6 and unmaps it.
func parseAddr(what, s string) (netip.Addr, error) {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("%s %q: %w", what, s, ErrInvalidAddress)
	}
	if err := checkAddr(what, a, false); err != nil {
		return netip.Addr{}, err
	}
	return a.Unmap(), nil
}
