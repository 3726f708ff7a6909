// Package hubbleflags owns `hubble observe`'s flow selection flags, written
// for this project with Hubble's exact semantics (Cilium v1.20's
// hubble/cmd/observe): the filter flags that build a GetFlowsRequest's
// whitelist and blacklist, the selectors (--last, --first, --all, --follow,
// --since, --until) and the raw --allowlist / --denylist, and what
// --print-raw-filters prints.
//
// The semantics, as Hubble's filter tracker has them: every filter flag
// adds to a pair of FlowFilters, left and right, the list being "left OR
// right". --from-X and --to-X add to the source or destination field of
// both; the either-direction --X adds the source field to the left and the
// destination field to the right ("source is X, or destination is X"). A
// flag given several times ORs its values; different flags AND. --not puts
// the next filter flag into the blacklist. Namespaces apply to the pod and
// service fields when the list is built: --namespace shop --pod checkout
// means shop/checkout.
//
// Deliberate differences: --ip-version refuses a value it does not know
// (Hubble takes it for "none"), and a value that is not UTF-8 is refused
// when parsed (Hubble fails when it sends the request).
package hubbleflags

import (
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/pflag"
	"google.golang.org/protobuf/types/known/timestamppb"
)

// DefaultLast is how many past flows a request without --last, --first,
// --all, --since, --until or --follow asks for (Hubble's default).
const DefaultLast = 20

// Flags are the flow selection flags of one command line. Register them on
// a FlagSet, parse it, then build the request with Request.
type Flags struct {
	white, black *tracker
	// negateNext: --not was given; the next filter flag goes to the
	// blacklist.
	negateNext bool

	all, follow         bool
	last, first         uint64
	since, until        string
	allowlist, denylist []string
	now                 func() time.Time
}

// New returns the flags, none set.
func New() *Flags { return &Flags{now: time.Now} }

// Register registers the filter and selector flags on fs.
func (f *Flags) Register(fs *pflag.FlagSet) {
	f.RegisterFilters(fs)
	f.RegisterSelectors(fs)
}

// RegisterFilters registers the filter flags (--pod, --verdict, --not, ...)
// and the raw --allowlist / --denylist on fs.
func (f *Flags) RegisterFilters(fs *pflag.FlagSet) {
	for i := range filterFlags {
		fl := &filterFlags[i]
		pf := fs.VarPF(filterValue{f: f, flag: fl}, fl.name, fl.short, fl.help)
		pf.NoOptDefVal = fl.noOpt
	}
	fs.StringArrayVar(&f.allowlist, "allowlist", nil, "add these JSON-encoded FlowFilters to the whitelist (as many per value as wanted)")
	fs.StringArrayVar(&f.denylist, "denylist", nil, "add these JSON-encoded FlowFilters to the blacklist")
}

// RegisterSelectors registers --last, --first, --all, --follow/-f, --since
// and --until on fs. --last, --first, --since and --until may be given once.
func (f *Flags) RegisterSelectors(fs *pflag.FlagSet) {
	fs.BoolVar(&f.all, "all", false, "every flow the server keeps (a relay: every flow of every node); narrow it with filters")
	fs.Uint64Var(&f.last, "last", 0, fmt.Sprintf("the last N matching flows the server keeps (default %d)", DefaultLast))
	fs.Uint64Var(&f.first, "first", 0, "the first N matching flows the server keeps")
	fs.BoolVarP(&f.follow, "follow", "f", false, "then new flows as they come, until Ctrl-C")
	fs.StringVar(&f.since, "since", "", "flows from this time on: a duration ago (30s, 5m, 1h30m) or a time (2026-11-21, 2026-11-21T03:00Z, RFC3339, RFC1123Z)")
	fs.StringVar(&f.until, "until", "", "flows up to this time, in --since's formats (ignored with --follow)")
	SingleUse(fs, "last", "first", "since", "until")
}

// filterValue is the pflag.Value of one filter flag: pflag calls Set once
// per occurrence, in command-line order, which is what --not relies on.
type filterValue struct {
	f    *Flags
	flag *filterFlag
}

func (v filterValue) String() string       { return "" }
func (v filterValue) Type() string         { return "filter" }
func (v filterValue) Set(val string) error { return v.f.set(v.flag, val) }

// set applies one occurrence of a filter flag.
func (f *Flags) set(fl *filterFlag, val string) error {
	if fl.set == nil { // --not
		if f.negateNext {
			return errors.New("consecutive --not statements: each --not negates the one filter flag after it")
		}
		f.negateNext = true
		return nil
	}
	if !utf8.ValidString(val) {
		return errors.New("not valid UTF-8: flow filters are protobuf strings")
	}
	t := &f.white
	if f.negateNext {
		f.negateNext, t = false, &f.black
	}
	if *t == nil {
		*t = &tracker{}
	}
	if err := (*t).use(fl.name); err != nil {
		return err
	}
	if err := fl.set(*t, val); err != nil {
		return err
	}
	return (*t).checkNamespaces()
}

// Filters returns the whitelist and blacklist the filter flags and the raw
// --allowlist / --denylist build.
func (f *Flags) Filters() (whitelist, blacklist []*flowpb.FlowFilter, err error) {
	if f.negateNext {
		return nil, nil, errors.New("trailing --not found in the arguments: --not negates the filter flag after it")
	}
	whitelist, blacklist = f.white.list(), f.black.list()
	al, err := parseRawFilters(f.allowlist)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid --allowlist flag: %w", err)
	}
	dl, err := parseRawFilters(f.denylist)
	if err != nil {
		return nil, nil, fmt.Errorf("invalid --denylist flag: %w", err)
	}
	return append(whitelist, al...), append(blacklist, dl...), nil
}

// Request builds the GetFlows request of the flags, as `hubble observe`
// does: the filters, then how many flows from where (Number, First,
// Follow, Since, Until).
func (f *Flags) Request() (*observerpb.GetFlowsRequest, error) {
	first, last := f.first > 0, f.last > 0
	switch {
	case first && last:
		return nil, errors.New("cannot set both --first and --last")
	case first && f.all:
		return nil, errors.New("cannot set both --first and --all")
	case first && f.follow:
		return nil, errors.New("cannot set both --first and --follow: --first reads from the oldest flow kept, --follow waits for new ones")
	case last && f.all:
		return nil, errors.New("cannot set both --last and --all")
	}
	since, until, err := f.window()
	if err != nil {
		return nil, err
	}
	wl, bl, err := f.Filters()
	if err != nil {
		return nil, err
	}
	number := f.last
	switch {
	case first:
		number = f.first
	case since != nil || until != nil:
	case f.all:
		number = ^uint64(0)
	case f.last == 0 && !f.follow:
		number = DefaultLast
	}
	return &observerpb.GetFlowsRequest{
		Number: number, First: first, Follow: f.follow, Since: since, Until: until, Whitelist: wl, Blacklist: bl,
	}, nil
}

// window parses --since and --until (--until only without --follow).
func (f *Flags) window() (since, until *timestamppb.Timestamp, err error) {
	now := f.now()
	if f.since != "" {
		t, err := ParseTime(f.since, now)
		if err != nil {
			return nil, nil, fmt.Errorf("--since: %w", err)
		}
		since = timestamppb.New(t)
		if err := since.CheckValid(); err != nil {
			return nil, nil, fmt.Errorf("--since %q: %w", f.since, err)
		}
	}
	if f.until != "" && !f.follow {
		t, err := ParseTime(f.until, now)
		if err != nil {
			return nil, nil, fmt.Errorf("--until: %w", err)
		}
		until = timestamppb.New(t)
		if err := until.CheckValid(); err != nil {
			return nil, nil, fmt.Errorf("--until %q: %w", f.until, err)
		}
	}
	return since, until, nil
}
