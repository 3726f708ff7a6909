package flowfilter

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// eventTypeL7 is Cilium's monitor type of L7 (access log) events.
const eventTypeL7 = 129

// httpField refuses an HTTP filter whose event_type filter cannot match L7
// events, as Hubble does.
func httpField(field string, build func(*flowpb.FlowFilter) (matchFunc, error)) func(*flowpb.FlowFilter) (matchFunc, error) {
	return func(ff *flowpb.FlowFilter) (matchFunc, error) {
		ts := ff.GetEventType()
		if len(ts) > 0 && !slices.ContainsFunc(ts, func(t *flowpb.EventTypeFilter) bool { return t.GetType() == eventTypeL7 }) {
			return nil, fmt.Errorf("%w for %q: it needs the event_type filter to match l7 events (type %d)", ErrInvalidValue, field, eventTypeL7)
		}
		return build(ff)
	}
}

// codeRange is a status code range: "404" is [404, 404], "5+" [500, 599],
// "40+" [400, 409].
type codeRange struct{ lo, hi uint32 }

var (
	statusFull   = regexp.MustCompile(`^[1-5][0-9]{2}$`)
	statusPrefix = regexp.MustCompile(`^[1-5][0-9]?\+$`)
)

func parseStatusCode(s string) (codeRange, error) {
	switch {
	case statusFull.MatchString(s):
		n, _ := strconv.ParseUint(s, 10, 32)
		return codeRange{uint32(n), uint32(n)}, nil
	case statusPrefix.MatchString(s):
		p := strings.TrimSuffix(s, "+")
		n, _ := strconv.ParseUint(p, 10, 32)
		scale := uint32(100)
		if len(p) == 2 {
			scale = 10
		}
		return codeRange{uint32(n) * scale, (uint32(n)+1)*scale - 1}, nil
	}
	return codeRange{}, invalid("http_status_code", s, fmt.Errorf("want a code (404) or a prefix (5+, 40+)"))
}

// httpStatusMatch matches HTTP responses (a code other than 0).
func httpStatusMatch(vals []string) (matchFunc, error) {
	var rs []codeRange
	for _, v := range vals {
		r, err := parseStatusCode(v)
		if err != nil {
			return nil, err
		}
		rs = append(rs, r)
	}
	return func(f *flowpb.Flow) bool {
		code := f.GetL7().GetHttp().GetCode()
		if code == 0 {
			return false
		}
		return slices.ContainsFunc(rs, func(r codeRange) bool { return r.lo <= code && code <= r.hi })
	}, nil
}

func httpMethodMatch(methods []string) matchFunc {
	return func(f *flowpb.Flow) bool {
		m := f.GetL7().GetHttp().GetMethod()
		return m != "" && slices.ContainsFunc(methods, func(w string) bool { return strings.EqualFold(w, m) })
	}
}

func httpURLMatch(exprs []string) (matchFunc, error) {
	res, err := compileRegexps("http_url", exprs)
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		u := f.GetL7().GetHttp().GetUrl()
		return u != "" && slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(u) })
	}, nil
}

// httpPathMatch matches the path of the request's URL; a URL that does not
// parse matches nothing.
func httpPathMatch(exprs []string) (matchFunc, error) {
	res, err := compileRegexps("http_path", exprs)
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		u := f.GetL7().GetHttp().GetUrl()
		if u == "" {
			return false
		}
		parsed, err := url.ParseRequestURI(u)
		if err != nil {
			return false
		}
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(parsed.Path) })
	}, nil
}

// httpHeaderMatch matches a flow with one of the headers, key and value
// exactly.
func httpHeaderMatch(want []*flowpb.HTTPHeader) matchFunc {
	return func(f *flowpb.Flow) bool {
		for _, h := range f.GetL7().GetHttp().GetHeaders() {
			for _, w := range want {
				if w.GetKey() == h.GetKey() && w.GetValue() == h.GetValue() {
					return true
				}
			}
		}
		return false
	}
}
