// Package browsertest runs headless Chromium (Debian's chromium package,
// `make chromium`) for the tests of pages served on loopback: one browser
// per test, driven with chromedp, every console error, uncaught exception
// and browser log error recorded, the process stopped and waited for when
// the test ends.
package browsertest

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/heapprofiler"
	cdplog "github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

// Path is Debian's Chromium.
const Path = "/usr/bin/chromium"

// Require skips t when Chromium is not installed, unless CI=true, in which
// case the test fails: CI installs it (make chromium).
func Require(t testing.TB) {
	t.Helper()
	if _, err := os.Stat(Path); err == nil {
		return
	}
	if testenv.InCI() {
		t.Fatalf("%s is missing; CI=true forbids skipping: run `make chromium` (apt-get install chromium)", Path)
	}
	t.Skipf("%s is missing: `make chromium` installs it", Path)
}

// Browser is one headless Chromium with one tab.
type Browser struct {
	ctx context.Context

	mu       sync.Mutex
	problems []string // guarded by mu
}

// Start starts Chromium for t (skipping as Require does) with the flags
// that work on a machine without network, and stops it when t ends.
func Start(t testing.TB) *Browser {
	t.Helper()
	Require(t)
	actx, acancel := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(Path), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU,
		chromedp.NoFirstRun, chromedp.NoDefaultBrowserCheck, chromedp.UserDataDir(t.TempDir()),
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true),
		chromedp.Flag("disable-dev-shm-usage", true), chromedp.WindowSize(1600, 1000))
	ctx, cancel := chromedp.NewContext(actx)
	t.Cleanup(func() {
		cancel()
		acancel() // waits for the process
	})
	b := &Browser{ctx: ctx}
	if err := chromedp.Listen(ctx, b.record); err != nil {
		t.Fatalf("starting %s: %v", Path, err)
	}
	err := chromedp.Do(ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		_, err := cdp.Call(ctx, tg, cdplog.Enable, cdp.Empty{})
		return err
	}))
	if err != nil {
		t.Fatalf("enabling the browser's log: %v", err)
	}
	return b
}

// Context is the tab's chromedp context: give it to chromedp.Run and Do.
func (b *Browser) Context() context.Context { return b.ctx }

// record keeps what a page should never cause.
func (b *Browser) record(ev any) {
	var p string
	switch ev := ev.(type) {
	case *runtime.EventConsoleAPICalled:
		if ev.Type != runtime.ConsoleAPICalledTypeError && ev.Type != runtime.ConsoleAPICalledTypeAssert {
			return
		}
		p = "console." + string(ev.Type) + ":"
		for _, a := range ev.Args {
			p += " " + string(a.Value) + a.Description
		}
	case *runtime.EventExceptionThrown:
		p = "uncaught: " + (&chromedp.ExceptionError{ExceptionDetails: ev.ExceptionDetails}).Error()
	case *cdplog.EventEntryAdded:
		if ev.Entry.Level != cdplog.EntryLevelError {
			return
		}
		p = fmt.Sprintf("log %s: %s (%s)", ev.Entry.Source, ev.Entry.Text, ev.Entry.URL)
	default:
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.problems = append(b.problems, p)
}

// Problems returns the console errors, uncaught exceptions and log errors
// of the tab so far.
func (b *Browser) Problems() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.problems...)
}

// Eval evaluates a JavaScript expression in the tab, failing t on error.
func Eval[T any](t testing.TB, b *Browser, expr string) T {
	t.Helper()
	v, err := chromedp.Run(b.ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluating %s: %v", expr, err)
	}
	return v
}

// WaitJS waits until the JavaScript expression is truthy in the tab,
// failing t with what after timeout.
func WaitJS(t testing.TB, b *Browser, timeout time.Duration, what, expr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, timeout+time.Second)
	defer cancel()
	_, err := chromedp.Run(ctx, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(timeout), chromedp.WithPollingInterval(20*time.Millisecond)))
	if err != nil {
		t.Fatalf("waiting for %s (%s): %v; page problems: %q", what, expr, err, b.Problems())
	}
}

// Navigate opens u in the tab.
func Navigate(t testing.TB, b *Browser, u string) {
	t.Helper()
	if err := chromedp.Do(b.ctx, chromedp.Navigate(u)); err != nil {
		t.Fatalf("opening %s: %v", u, err)
	}
}

// Screenshot returns a PNG of the whole page.
func Screenshot(t testing.TB, b *Browser) []byte {
	t.Helper()
	png, err := chromedp.Run(b.ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	return png
}

// HeapMB is the page's JavaScript heap in use after a collection, in MB.
func HeapMB(t testing.TB, b *Browser) float64 {
	t.Helper()
	var used float64
	err := chromedp.Do(b.ctx, chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
		if _, err := cdp.Call(ctx, tg, heapprofiler.CollectGarbage, cdp.Empty{}); err != nil {
			return err
		}
		r, err := cdp.Call(ctx, tg, runtime.GetHeapUsage, cdp.Empty{})
		used = r.UsedSize
		return err
	}))
	if err != nil {
		t.Fatalf("reading the page's heap: %v", err)
	}
	return used / (1 << 20)
}
