package flowfilter

import (
	"fmt"
	"regexp"
	"strings"
)

// fqdnRegexp matches any FQDN, underscores included: Hubble's meaning of an
// empty cluster or node part in a node name pattern.
const fqdnRegexp = `(?:[-0-9_a-z]+(?:\.[-0-9_a-z]+)*)`

// appendFQDNPattern appends the regular expression of one FQDN pattern:
// trimmed, one trailing dot dropped, lower-cased; * matches [-.0-9a-z]*.
func appendFQDNPattern(sb *strings.Builder, pattern string) error {
	p := strings.ToLower(strings.TrimSuffix(strings.TrimSpace(pattern), "."))
	switch {
	case p == "":
		return fmt.Errorf("%w: %q: empty pattern", ErrInvalidValue, pattern)
	case strings.HasSuffix(p, "."):
		return fmt.Errorf("%w: %q: more than one trailing dot", ErrInvalidValue, pattern)
	}
	for _, r := range p {
		switch {
		case r == '.':
			sb.WriteString(`\.`)
		case r == '*':
			sb.WriteString(`[-.0-9a-z]*`)
		case r == '-' || r == '_' || '0' <= r && r <= '9' || 'a' <= r && r <= 'z':
			sb.WriteRune(r)
		default:
			return fmt.Errorf("%w: %q: character %q not allowed in a pattern", ErrInvalidValue, pattern, r)
		}
	}
	return nil
}

// appendNodeNamePattern appends "cluster/node" (or "node": any cluster).
func appendNodeNamePattern(sb *strings.Builder, pattern string) error {
	if pattern == "" {
		return fmt.Errorf("%w: empty node name pattern", ErrInvalidValue)
	}
	cluster, node := "", pattern
	if parts := strings.Split(pattern, "/"); len(parts) == 2 {
		cluster, node = parts[0], parts[1]
	} else if len(parts) > 2 {
		return fmt.Errorf("%w: %q: more than one slash", ErrInvalidValue, pattern)
	}
	for i, part := range []string{cluster, node} {
		if i == 1 {
			sb.WriteByte('/')
		}
		if part == "" {
			sb.WriteString(fqdnRegexp)
		} else if err := appendFQDNPattern(sb, part); err != nil {
			return err
		}
	}
	return nil
}

func compileAlternatives(patterns []string, add func(*strings.Builder, string) error) (*regexp.Regexp, error) {
	var sb strings.Builder
	sb.WriteString(`\A(?:`)
	for i, p := range patterns {
		if i > 0 {
			sb.WriteByte('|')
		}
		if err := add(&sb, p); err != nil {
			return nil, err
		}
	}
	sb.WriteString(`)\z`)
	return regexp.Compile(sb.String())
}

func compileFQDNPatterns(patterns []string) (*regexp.Regexp, error) {
	return compileAlternatives(patterns, appendFQDNPattern)
}

func compileNodeNamePatterns(patterns []string) (*regexp.Regexp, error) {
	return compileAlternatives(patterns, appendNodeNamePattern)
}
