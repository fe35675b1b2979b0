package localrun

import (
	"testing"

	"termgate.dev/termgate/test/manifest"
)

// A test that points the shipped registrations elsewhere and back must get
// every webhook's path back with them.
func TestPointingTheRegistrationsAgainKeepsEachPath(t *testing.T) {
	dir, err := manifest.Shipped(manifest.StaticDir)
	if err != nil {
		t.Fatal(err)
	}
	c, err := LoadWebhookConfigurations(dir)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for _, w := range c.Validating.Webhooks {
		want = append(want, "https://127.0.0.1:2"+*w.ClientConfig.Service.Path)
	}
	c.PointAt("https://127.0.0.1:1", nil)
	c.PointAt("https://127.0.0.1:2", []byte("ca"))
	for i, w := range c.Validating.Webhooks {
		if w.ClientConfig.URL == nil || *w.ClientConfig.URL != want[i] || string(w.ClientConfig.CABundle) != "ca" || w.ClientConfig.Service != nil {
			t.Errorf("webhook %s: URL %v, bundle %q, want %s", w.Name, w.ClientConfig.URL, w.ClientConfig.CABundle, want[i])
		}
	}
	if len(want) == 0 {
		t.Fatal("no validating webhooks read")
	}
}
