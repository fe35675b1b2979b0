package daemon

import (
	"fmt"
	"net/http"
	"strings"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
)

// Check is one liveness or readiness condition.
type Check struct {
	Name string
	// Fn returns nil when the condition holds, else why not. It must
	// answer from memory: a probe that calls out lets whoever can reach
	// the port spend the process's budget for that call.
	Fn func() error
}

// Probes serves /healthz (every live check holds) and /readyz (every ready
// check holds). A failing probe lists the reasons; ?verbose lists every
// check. Failures are not logged: probes poll often and the kubelet
// records them as events.
func Probes(live, ready []Check) http.Handler {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer)
	r.Get("/healthz", probe(live))
	r.Get("/readyz", probe(ready))
	return r
}

func probe(checks []Check) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		failed := false
		for _, c := range checks {
			if err := c.Fn(); err != nil {
				failed = true
				fmt.Fprintf(&b, "[-]%s failed: %v\n", c.Name, err)
			} else {
				fmt.Fprintf(&b, "[+]%s ok\n", c.Name)
			}
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.Header().Set("X-Content-Type-Options", "nosniff")
		if failed {
			w.WriteHeader(http.StatusServiceUnavailable)
			_, _ = w.Write([]byte(b.String()))
			return
		}
		if r.URL.Query().Has("verbose") {
			_, _ = w.Write([]byte(b.String()))
		}
		_, _ = w.Write([]byte("ok\n"))
	}
}
