package sink

import (
	"errors"
	"fmt"
	"net/textproto"
	"net/url"
	"regexp"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"

	"termgate.dev/termgate/notifier/delivery"
	"termgate.dev/termgate/notifier/notification"
)

// Formats of a sink's request body.
const (
	// FormatCloudEvents: a CloudEvents 1.0 event in structured mode
	// (application/cloudevents+json), the Notification as its data.
	FormatCloudEvents = "cloudevents"
	// FormatSlack: a Slack incoming-webhook message ({"text": ...}).
	FormatSlack = "slack"
	// FormatTemplate: the sink's own Go text/template over the Notification.
	FormatTemplate = "template"
)

// File is the notifier's configuration file (--config).
type File struct {
	// Sinks receive the notifications; each gets every notification its
	// filter accepts, in order of occurrence per node.
	Sinks []Config `json:"sinks"`
}

// Config is one sink. Its URL, headers and signing key are not here: they
// come from the sinks Secret, under keys named after the sink.
type Config struct {
	// Name identifies the sink in metrics, logs and the delivery record,
	// and names its Secret keys: <name>.url, <name>.headers, <name>.hmac-key.
	Name string `json:"name"`
	// Format is cloudevents (the default), slack or template.
	Format string `json:"format,omitempty"`
	// Template is the body for format template.
	Template string `json:"template,omitempty"`
	// ContentType of a template's body; application/json by default, in
	// which case the template's output must be valid JSON.
	ContentType string `json:"contentType,omitempty"`
	// Kinds the sink accepts; all when empty.
	Kinds []notification.Kind `json:"kinds,omitempty"`
	// NodeSelector is a label selector the node must match; all when empty.
	NodeSelector string `json:"nodeSelector,omitempty"`
	// SignatureHeader carries the HMAC-SHA256 of the body when the Secret
	// has <name>.hmac-key.
	SignatureHeader string `json:"signatureHeader,omitempty"`
	// Delivery settings; zero values take the defaults.
	Timeout       *metav1.Duration `json:"timeout,omitempty"`
	QueueSize     int              `json:"queueSize,omitempty"`
	BackoffBase   *metav1.Duration `json:"backoffBase,omitempty"`
	BackoffMax    *metav1.Duration `json:"backoffMax,omitempty"`
	RetryAfterMax *metav1.Duration `json:"retryAfterMax,omitempty"`
}

// DefaultSignatureHeader carries "sha256=<hex>" of the body.
const DefaultSignatureHeader = "X-Termgate-Signature-256"

// Secret key suffixes.
const (
	KeyURL     = ".url"
	KeyHeaders = ".headers"
	KeyHMAC    = ".hmac-key"
)

var sinkName = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$`)

// ParseFile reads the configuration file strictly: an unknown field is an
// error, not a silently ignored setting.
func ParseFile(b []byte) (File, error) {
	var f File
	if err := yaml.UnmarshalStrict(b, &f); err != nil {
		return File{}, fmt.Errorf("notifier configuration: %w", err)
	}
	if len(f.Sinks) == 0 {
		return File{}, errors.New("notifier configuration: no sinks")
	}
	return f, nil
}

// Build validates every sink of f and gives each its secrets from secret
// (the sinks Secret's data). Errors name the sink and the key, never a
// value.
func Build(f File, secret map[string][]byte) ([]*Sink, error) {
	var sinks []*Sink
	var errs []error
	seen := map[string]bool{}
	for i, c := range f.Sinks {
		if seen[c.Name] {
			errs = append(errs, fmt.Errorf("sinks[%d]: name %q used twice", i, c.Name))
			continue
		}
		seen[c.Name] = true
		s, err := build(c, secret)
		if err != nil {
			errs = append(errs, fmt.Errorf("sink %q: %w", c.Name, err))
			continue
		}
		sinks = append(sinks, s)
	}
	return sinks, errors.Join(errs...)
}

// Validate checks f without secrets: names, formats, filters and
// templates. The notifier runs it at start, before it reads the Secret.
func Validate(f File) error {
	var errs []error
	for _, c := range f.Sinks {
		if _, err := build(c, nil); err != nil {
			errs = append(errs, fmt.Errorf("sink %q: %w", c.Name, err))
		}
	}
	return errors.Join(errs...)
}

// build makes one sink; with a nil secret it checks the configuration only.
func build(c Config, secret map[string][]byte) (*Sink, error) {
	if !sinkName.MatchString(c.Name) {
		return nil, errors.New("name must be a DNS label (lower-case letters, digits, '-'; at most 63)")
	}
	s := &Sink{name: c.Name, format: c.Format, kinds: map[notification.Kind]bool{}, signatureHeader: c.SignatureHeader}
	if s.format == "" {
		s.format = FormatCloudEvents
	}
	if s.signatureHeader == "" {
		s.signatureHeader = DefaultSignatureHeader
	}
	for _, k := range c.Kinds {
		if !k.Valid() {
			return nil, fmt.Errorf("kind %q: want one of %v", k, notification.Kinds)
		}
		s.kinds[k] = true
	}
	sel, err := labels.Parse(c.NodeSelector)
	if err != nil {
		return nil, fmt.Errorf("nodeSelector: %w", err)
	}
	s.selector = sel
	switch s.format {
	case FormatCloudEvents:
		s.contentType = "application/cloudevents+json; charset=utf-8"
	case FormatSlack:
		s.contentType = "application/json"
	case FormatTemplate:
		s.contentType = c.ContentType
		if s.contentType == "" {
			s.contentType = "application/json"
		}
		if s.tmpl, err = parseTemplate(c.Name, c.Template, s.contentType, s.acceptedKinds()); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("format %q: want %s, %s or %s", c.Format, FormatCloudEvents, FormatSlack, FormatTemplate)
	}
	if c.Template != "" && s.format != FormatTemplate {
		return nil, fmt.Errorf("template is set but format is %s; set format: template", s.format)
	}
	if s.delivery, err = deliveryConfig(c); err != nil {
		return nil, err
	}
	if secret == nil {
		return s, nil
	}
	return s, s.setSecrets(secret)
}

func (s *Sink) acceptedKinds() []notification.Kind {
	if len(s.kinds) == 0 {
		return notification.Kinds
	}
	var ks []notification.Kind
	for _, k := range notification.Kinds {
		if s.kinds[k] {
			ks = append(ks, k)
		}
	}
	return ks
}

func deliveryConfig(c Config) (delivery.Config, error) {
	d := delivery.DefaultConfig()
	set := func(dst *time.Duration, v *metav1.Duration) {
		if v != nil {
			*dst = v.Duration
		}
	}
	set(&d.Timeout, c.Timeout)
	set(&d.BackoffBase, c.BackoffBase)
	set(&d.BackoffMax, c.BackoffMax)
	set(&d.RetryAfterMax, c.RetryAfterMax)
	if c.QueueSize != 0 {
		d.QueueSize = c.QueueSize
	}
	return d, d.Validate()
}

// setSecrets reads the sink's URL, headers and key from the Secret's data.
func (s *Sink) setSecrets(secret map[string][]byte) error {
	raw, ok := secret[s.name+KeyURL]
	if !ok || len(strings.TrimSpace(string(raw))) == 0 {
		return fmt.Errorf("the sinks Secret has no key %s", s.name+KeyURL)
	}
	u, err := url.Parse(strings.TrimSpace(string(raw)))
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		// The URL is a secret (Slack's carries its token): never quote it.
		return fmt.Errorf("key %s: not an absolute http or https URL", s.name+KeyURL)
	}
	s.url = u.String()
	s.headers = map[string]string{}
	if h, ok := secret[s.name+KeyHeaders]; ok {
		for i, line := range strings.Split(string(h), "\n") {
			line = strings.TrimSpace(line)
			if line == "" || strings.HasPrefix(line, "#") {
				continue
			}
			name, value, ok := strings.Cut(line, ":")
			name = strings.TrimSpace(name)
			if !ok || name == "" || strings.ContainsAny(name, " \t") {
				return fmt.Errorf("key %s, line %d: want \"Name: value\"", s.name+KeyHeaders, i+1)
			}
			s.headers[textproto.CanonicalMIMEHeaderKey(name)] = strings.TrimSpace(value)
		}
	}
	if k, ok := secret[s.name+KeyHMAC]; ok {
		if len(k) < 16 {
			return fmt.Errorf("key %s: an HMAC key of at least 16 bytes is required", s.name+KeyHMAC)
		}
		s.hmacKey = k
	}
	return nil
}
