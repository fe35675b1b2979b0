package webhook

import (
	"fmt"
	"net/http"
	"strings"
)

// Check is one readiness condition.
type Check struct {
	Name string
	// Fn returns nil when the condition holds, else why not.
	Fn func() error
}

// Probes serves /healthz (the process answers) and /readyz (every check
// holds). A failing /readyz lists the reasons; ?verbose lists every check.
// Failures are not logged: probes poll often and the kubelet already
// records them as events.
func Probes(ready []Check) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		var b strings.Builder
		failed := false
		for _, c := range ready {
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
	})
	return mux
}
