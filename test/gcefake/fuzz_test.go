package gcefake

import (
	"encoding/json"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// FuzzRead feeds arbitrary paths and query strings through the parsers and
// the store: nothing may panic, an accepted path must name one key in one
// spelling, and every answer must be a well-formed reply.
func FuzzRead(f *testing.F) {
	for _, seed := range [][2]string{
		{"instance/preempted", "wait_for_change=true&last_etag=abc&timeout_sec=5"},
		{"instance/", "recursive=true&alt=json"},
		{"", "alt=text&recursive=true"},
		{"instance//name", "timeout_sec=99999999999999999999"},
		{"instance/../project/", "alt=xml"},
		{"instance/attributes/kube-labels", "alt=json"},
		{"instance/id/", "recursive=TRUE"},
	} {
		f.Add(seed[0], seed[1])
	}
	st := newStore(1)
	for _, kv := range spotL4.withDefaults(1).keys() {
		if _, err := st.set(kv[0], kv[1]); err != nil {
			f.Fatalf("seed store: %v", err)
		}
	}
	f.Fuzz(func(t *testing.T, path, rawQuery string) {
		tgt, perr := parsePath(path)
		values, _ := url.ParseQuery(rawQuery)
		q, qerr := parseQuery(values)
		if qerr == nil && (q.timeout < 0 || q.timeout > maxTimeout) {
			t.Errorf("timeout %v accepted from %q", q.timeout, rawQuery)
		}
		if perr != nil {
			return
		}
		if respelled := dirPrefix(tgt.key); tgt.dir && respelled != path || !tgt.dir && tgt.key != path {
			t.Errorf("path %q parsed as %+v, which spells differently", path, tgt)
		}
		if qerr != nil {
			return
		}
		rep := st.read(tgt, q)
		switch rep.status {
		case http.StatusOK:
			if rep.etag == "" {
				t.Errorf("%q?%q: 200 without ETag", path, rawQuery)
			}
			if strings.HasPrefix(rep.contentType, "application/json") && !json.Valid(rep.body) {
				t.Errorf("%q?%q: invalid JSON %q", path, rawQuery, rep.body)
			}
		case http.StatusNotFound:
		default:
			t.Errorf("%q?%q: status %d", path, rawQuery, rep.status)
		}
	})
}
