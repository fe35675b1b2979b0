package sink

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"testing"

	"termgate.dev/termgate/notifier/notification"
)

const secretURL = "https://hooks.example.com/services/T0/B0/s3cr3t-token"

func secretFor(name string, extra ...string) map[string][]byte {
	s := map[string][]byte{name + KeyURL: []byte(secretURL)}
	for i := 0; i+1 < len(extra); i += 2 {
		s[name+extra[i]] = []byte(extra[i+1])
	}
	return s
}

func mustBuild(t *testing.T, yaml string, secret map[string][]byte) []*Sink {
	t.Helper()
	f, err := ParseFile([]byte(yaml))
	if err != nil {
		t.Fatal(err)
	}
	sinks, err := Build(f, secret)
	if err != nil {
		t.Fatal(err)
	}
	return sinks
}

func TestCloudEventsBodyIsAStructuredCloudEventWithTheNotificationAsData(t *testing.T) {
	s := mustBuild(t, "sinks: [{name: events}]", secretFor("events"))[0]
	n := Sample(notification.KindDrainFinished)
	req, err := s.Request(context.Background(), n)
	if err != nil {
		t.Fatal(err)
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/cloudevents+json; charset=utf-8" {
		t.Errorf("content type %q, want structured-mode CloudEvents", ct)
	}
	if req.Header.Get("Idempotency-Key") != n.ID {
		t.Errorf("Idempotency-Key %q, want the id %q", req.Header.Get("Idempotency-Key"), n.ID)
	}
	body, _ := io.ReadAll(req.Body)
	var ev map[string]any
	if err := json.Unmarshal(body, &ev); err != nil {
		t.Fatal(err)
	}
	for k, want := range map[string]string{
		"specversion": "1.0", "id": n.ID, "source": n.Source, "type": "dev.termgate.node.drain-finished",
		"subject": "node/" + n.Node.Name, "datacontenttype": "application/json", "time": "2026-01-02T03:04:19Z",
	} {
		if ev[k] != want {
			t.Errorf("%s = %v, want %q", k, ev[k], want)
		}
	}
	data, _ := ev["data"].(map[string]any)
	drain, _ := data["drain"].(map[string]any)
	if drain["evicted"] != 12.0 || drain["blockedByPDB"] != 2.0 || drain["durationSeconds"] != 14.0 {
		t.Errorf("data.drain = %v, want the drain's figures", drain)
	}
}

func TestHMACSignatureCoversTheBodySent(t *testing.T) {
	key := "0123456789abcdef-key"
	s := mustBuild(t, "sinks: [{name: signed, signatureHeader: X-Sig}]", secretFor("signed", KeyHMAC, key))[0]
	req, err := s.Request(context.Background(), Sample(notification.KindMarked))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(req.Body)
	mac := hmac.New(sha256.New, []byte(key))
	mac.Write(body)
	if got, want := req.Header.Get("X-Sig"), "sha256="+hex.EncodeToString(mac.Sum(nil)); got != want {
		t.Errorf("signature %q, want %q", got, want)
	}
	unsigned := mustBuild(t, "sinks: [{name: plain}]", secretFor("plain"))[0]
	req, _ = unsigned.Request(context.Background(), Sample(notification.KindMarked))
	if req.Header.Get(DefaultSignatureHeader) != "" {
		t.Error("a sink without a key signed its body")
	}
}

func TestHeadersFromTheSecretAreSent(t *testing.T) {
	s := mustBuild(t, "sinks: [{name: api}]", secretFor("api", KeyHeaders, "Authorization: Bearer abc\n# a comment\n\nx-team: platform"))[0]
	req, _ := s.Request(context.Background(), Sample(notification.KindMarked))
	if req.Header.Get("Authorization") != "Bearer abc" || req.Header.Get("X-Team") != "platform" {
		t.Errorf("headers %v, want Authorization and X-Team from the Secret", req.Header)
	}
}

func TestSlackPresetSaysWhatHappenedInOneMessage(t *testing.T) {
	s := mustBuild(t, "sinks: [{name: chat, format: slack}]", secretFor("chat"))[0]
	for kind, want := range map[notification.Kind]string{
		notification.KindMarked:          "is going away (Spot/preemptible VM reclaimed): marked terminating, draining before 03:04:35 UTC (30s notice)",
		notification.KindDrainFinished:   "drained in 14s: 12 evicted, 1 deleted at a cut-off, 2 blocked by a PodDisruptionBudget, 0 left",
		notification.KindDeadlineMissed:  "passed with 2 pods still on the node",
		notification.KindNoticeWithdrawn: "termination marks removed, the notice was withdrawn",
	} {
		body, err := s.Body(Sample(kind))
		if err != nil {
			t.Fatal(err)
		}
		var msg struct{ Text string }
		if err := json.Unmarshal(body, &msg); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(msg.Text, want) || !strings.Contains(msg.Text, "*gke-pool-spot-1a2b*") {
			t.Errorf("%s: text %q, want it to say %q about the node", kind, msg.Text, want)
		}
	}
}

func TestFiltersOnKindAndNodeLabels(t *testing.T) {
	s := mustBuild(t, `sinks: [{name: spot-pages, kinds: [node.deadline-missed], nodeSelector: "cloud.google.com/gke-spot=true"}]`, secretFor("spot-pages"))[0]
	missed := Sample(notification.KindDeadlineMissed)
	onDemand := missed
	onDemand.Node.Labels = map[string]string{"topology.kubernetes.io/zone": "us-central1-a"}
	for _, c := range []struct {
		name string
		n    notification.Notification
		want bool
	}{
		{"a missed deadline on a Spot node passes", missed, true},
		{"a missed deadline on an on-demand node is filtered out", onDemand, false},
		{"another kind on a Spot node is filtered out", Sample(notification.KindDrainFinished), false},
	} {
		if got := s.Accepts(c.n); got != c.want {
			t.Errorf("%s: Accepts = %v", c.name, got)
		}
	}
}

func TestTemplateRendersTheNotification(t *testing.T) {
	s := mustBuild(t, `sinks:
- name: ops
  format: template
  template: '{"summary": {{json (printf "%s %s" .Kind .Node.Name)}}, "at": "{{rfc3339 .OccurredAt}}", "zone": {{json (index .Node.Labels "topology.kubernetes.io/zone")}}{{with .Drain}}, "evicted": {{.Evicted}}{{end}}}'
`, secretFor("ops"))[0]
	body, err := s.Body(Sample(notification.KindDrainFinished))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"summary": "node.drain-finished gke-pool-spot-1a2b", "at": "2026-01-02T03:04:19Z", "zone": "us-central1-a", "evicted": 12}`
	if string(body) != want {
		t.Errorf("body\n%s\nwant\n%s", body, want)
	}
}

func TestTemplatesThatReachBeyondTheNotificationAreRefusedAtStart(t *testing.T) {
	for _, c := range []struct{ name, template, want string }{
		{"reading the environment with a function", `{{ env "HOME" }}`, `function "env" not defined`},
		{"reading the environment through sprig's name", `{{ expandenv "$HOME" }}`, `function "expandenv" not defined`},
		{"reading a file", `{{ readFile "/var/run/secrets/kubernetes.io/serviceaccount/token" }}`, `function "readFile" not defined`},
		{"a field that is not the notification's", `{{ .Env.HOME }}`, "can't evaluate field Env"},
		{"calling a method of the process", `{{ .Getenv "HOME" }}`, "can't evaluate field Getenv"},
		{"JSON built by pasting strings", `{"text": "{{.Message}}"}`, "not valid JSON"},
		{"an empty template", ``, "needs a template"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := ParseFile(fmt.Appendf(nil, "sinks: [{name: ops, format: template, template: %q}]", c.template))
			if err != nil {
				t.Fatal(err)
			}
			err = Validate(f)
			if err == nil {
				t.Fatal("template accepted")
			}
			if !strings.Contains(err.Error(), c.want) || !strings.Contains(err.Error(), `sink "ops": template refused`) {
				t.Errorf("error %q, want it to name the sink and say %q", err, c.want)
			}
			if c.want != "needs a template" && c.want != "not valid JSON" && !strings.Contains(err.Error(), "cannot read the environment or files") {
				t.Errorf("error %q does not say what a template may use", err)
			}
		})
	}
}

func TestBadConfigurationIsRefusedWithoutQuotingSecrets(t *testing.T) {
	for _, c := range []struct {
		name, yaml string
		secret     map[string][]byte
		want       string
	}{
		{"unknown field", "sinks: [{name: a, url: x}]", nil, `unknown field "url"`},
		{"no sinks", "sinks: []", nil, "no sinks"},
		{"bad name", "sinks: [{name: A_B}]", nil, "DNS label"},
		{"duplicate", "sinks: [{name: a}, {name: a}]", secretFor("a"), "used twice"},
		{"unknown kind", "sinks: [{name: a, kinds: [node.exploded]}]", secretFor("a"), `kind "node.exploded"`},
		{"bad selector", `sinks: [{name: a, nodeSelector: "a=b=c"}]`, secretFor("a"), "nodeSelector"},
		{"unknown format", "sinks: [{name: a, format: xml}]", secretFor("a"), `format "xml"`},
		{"template on cloudevents", "sinks: [{name: a, template: x}]", secretFor("a"), "set format: template"},
		{"bad delivery", "sinks: [{name: a, queueSize: -1}]", secretFor("a"), "queueSize"},
		{"no URL", "sinks: [{name: a}]", map[string][]byte{}, "no key a.url"},
		{"URL not absolute", "sinks: [{name: a}]", map[string][]byte{"a.url": []byte("hooks.example.com/s3cr3t-token")}, "not an absolute http or https URL"},
		{"bad header", "sinks: [{name: a}]", secretFor("a", KeyHeaders, "Authorization Bearer s3cr3t-token"), "a.headers, line 1"},
		{"short key", "sinks: [{name: a}]", secretFor("a", KeyHMAC, "s3cr3t-token"), "at least 16 bytes"},
	} {
		t.Run(c.name, func(t *testing.T) {
			f, err := ParseFile([]byte(c.yaml))
			if err == nil {
				_, err = Build(f, c.secret)
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %v, want %q", err, c.want)
			}
			if strings.Contains(err.Error(), "s3cr3t") {
				t.Errorf("error quotes a secret: %v", err)
			}
		})
	}
}

func TestSinkPrintsNoSecret(t *testing.T) {
	s := mustBuild(t, "sinks: [{name: a}]", secretFor("a", KeyHeaders, "Authorization: Bearer s3cr3t-header", KeyHMAC, "s3cr3t-hmac-key-0123"))[0]
	for _, out := range []string{fmt.Sprint(s), fmt.Sprintf("%v %+v %#v %s", s, s, s, s)} {
		if strings.Contains(out, "s3cr3t") {
			t.Errorf("printed a secret: %s", out)
		}
	}
}
