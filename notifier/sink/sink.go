// Package sink is where notifications go: an HTTP endpoint, its body format
// (CloudEvents, Slack, or a user's template), its filter and its signing.
// The URL, headers and signing key come from a Secret and never appear in
// an error, a log line or fmt output of a Sink.
package sink

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"net/http"
	"text/template"
	"time"

	"k8s.io/apimachinery/pkg/labels"

	"termgate.dev/termgate/notifier/delivery"
	"termgate.dev/termgate/notifier/notification"
)

// Sink is one configured receiver.
type Sink struct {
	name        string
	format      string
	contentType string
	tmpl        *template.Template
	kinds       map[notification.Kind]bool
	selector    labels.Selector
	delivery    delivery.Config

	// Secrets.
	url             string
	headers         map[string]string
	hmacKey         []byte
	signatureHeader string
}

var _ delivery.Sender = (*Sink)(nil)

// Name is the sink's name.
func (s *Sink) Name() string { return s.name }

// String names the sink and nothing secret.
func (s *Sink) String() string { return "sink " + s.name + " (" + s.format + ")" }

// GoString keeps %#v from printing the secrets.
func (s *Sink) GoString() string { return s.String() }

// Delivery is the sink's queue, timeout and retry settings.
func (s *Sink) Delivery() delivery.Config { return s.delivery }

// Accepts reports whether the sink's filter lets n through.
func (s *Sink) Accepts(n notification.Notification) bool {
	if len(s.kinds) > 0 && !s.kinds[n.Kind] {
		return false
	}
	return s.selector.Matches(labels.Set(n.Node.Labels))
}

// Request builds the HTTP request that delivers n.
func (s *Sink) Request(ctx context.Context, n notification.Notification) (*http.Request, error) {
	body, err := s.Body(n)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("%s: build request", s) // the error would quote the URL
	}
	for k, v := range s.headers {
		req.Header.Set(k, v)
	}
	req.Header.Set("Content-Type", s.contentType)
	req.Header.Set("User-Agent", "termgate-notifier")
	// Lets receivers that do not read the body deduplicate too.
	req.Header.Set("Idempotency-Key", n.ID)
	if s.hmacKey != nil {
		mac := hmac.New(sha256.New, s.hmacKey)
		mac.Write(body)
		req.Header.Set(s.signatureHeader, "sha256="+hex.EncodeToString(mac.Sum(nil)))
	}
	return req, nil
}

// Body renders n in the sink's format.
func (s *Sink) Body(n notification.Notification) ([]byte, error) {
	switch s.format {
	case FormatSlack:
		return json.Marshal(map[string]string{"text": slackText(n)})
	case FormatTemplate:
		return execute(s.tmpl, n)
	}
	return cloudEvent(n)
}

// cloudEvent renders n as a CloudEvents 1.0 event in structured JSON mode.
// Receivers deduplicate by source and id.
func cloudEvent(n notification.Notification) ([]byte, error) {
	return json.Marshal(struct {
		SpecVersion     string                    `json:"specversion"`
		ID              string                    `json:"id"`
		Source          string                    `json:"source"`
		Type            string                    `json:"type"`
		Subject         string                    `json:"subject"`
		Time            string                    `json:"time"`
		DataContentType string                    `json:"datacontenttype"`
		Data            notification.Notification `json:"data"`
	}{
		SpecVersion: "1.0", ID: n.ID, Source: n.Source, Type: n.Type, Subject: "node/" + n.Node.Name,
		Time: n.OccurredAt.UTC().Format(time.RFC3339Nano), DataContentType: "application/json", Data: n,
	})
}
