package review

import (
	"net/http"
	"strings"
	"testing"
)

// FuzzHandler: whatever the body, the handler answers 200 with a review or
// a 4xx, and never panics.
func FuzzHandler(f *testing.F) {
	f.Add(validReview)
	f.Add(`{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview","request":{"uid":"\u0000"}}`)
	f.Add(`{"request":{"uid":"x","object":null}}`)
	f.Add("null")
	f.Add("[]")
	f.Fuzz(func(t *testing.T, body string) {
		g := &scriptedGate{resp: Deny("no", body)}
		h, _ := newTestHandler(t, g)
		w := post(t, h, "application/json", body)
		switch {
		case w.Code == http.StatusOK:
			r := decodeReview(t, w.Body.Bytes())
			if r.Allowed || !strings.EqualFold(string(r.UID), g.seen.UID) {
				t.Fatalf("answer %+v for uid %q", r, g.seen.UID)
			}
		case w.Code >= 400 && w.Code < 500:
		default:
			t.Fatalf("status %d", w.Code)
		}
	})
}

// FuzzDecodePod: any object decodes or fails, without panicking.
func FuzzDecodePod(f *testing.F) {
	f.Add(`{"metadata":{"annotations":{"a":"b"}},"spec":{"nodeName":"n","tolerations":[{"operator":"Exists"}]}}`)
	f.Add(`{"metadata":{},"spec":{"tolerations":[{"tolerationSeconds":-5}]}}`)
	f.Fuzz(func(t *testing.T, raw string) {
		pod, err := DecodePod([]byte(raw), "ns")
		if err == nil && pod.Namespace == "" {
			t.Fatal("decoded pod without namespace")
		}
	})
}
