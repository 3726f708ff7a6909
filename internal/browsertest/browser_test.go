package browsertest

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/clustermesh/clustermesh/internal/testenv"
)

func TestMain(m *testing.M) { testenv.Main(m) }

// TestProblemsRecorded: a clean page has none, a page that throws and logs
// an error has both.
func TestProblemsRecorded(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/bad":
			w.Write([]byte(`<html><body><script>console.error("boom"); null.x;</script></body></html>`))
		case "/favicon.ico":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.Write([]byte(`<html><body><p id="ok">fine</p></body></html>`))
		}
	}))
	defer srv.Close()
	b := Start(t)
	if err := chromedp.Do(b.Context(), chromedp.Navigate(srv.URL+"/"), chromedp.WaitVisible("#ok")); err != nil {
		t.Fatal(err)
	}
	if p := b.Problems(); len(p) != 0 {
		t.Fatalf("a clean page: %q", p)
	}
	if err := chromedp.Do(b.Context(), chromedp.Navigate(srv.URL+"/bad")); err != nil {
		t.Fatal(err)
	}
	testenv.WaitFor(t, 10*time.Second, "the bad page's two problems", func() bool { return len(b.Problems()) >= 2 })
	p := strings.Join(b.Problems(), "\n")
	if !strings.Contains(p, "boom") || !strings.Contains(p, "uncaught") {
		t.Errorf("problems: %s", p)
	}
}
