package cluster

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// A reclaim's audit log outgrows the API server's 100 MB rotation: the
// binds in the rotated files count as much as those in the current one.
func TestAuditReadersReadTheRotatedFilesToo(t *testing.T) {
	c := &Cluster{Dir: t.TempDir()}
	bind := func(pod, node string) string {
		return `{"verb":"create","user":{"username":"system:kube-scheduler"},"objectRef":{"resource":"pods","subresource":"binding","namespace":"ns","name":"` + pod +
			`"},"responseStatus":{"code":201},"requestReceivedTimestamp":"2026-12-03T10:00:00.000000Z","stageTimestamp":"2026-12-03T10:00:00.001000Z","requestObject":{"target":{"name":"` + node + `"}}}` + "\n"
	}
	// The names the API server's log writer gives: the time of rotation
	// between the base name and the extension.
	files := map[string]string{
		"audit-2026-12-03T10-00-00.000.log": bind("first", "a"),
		"audit-2026-12-03T10-05-00.000.log": bind("second", "b"),
		"audit.log":                         bind("third", "c"),
	}
	for name, line := range files {
		if err := os.WriteFile(filepath.Join(c.Dir, name), []byte(line), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	binds, err := c.Binds()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, b := range binds {
		got = append(got, b.Pod+"->"+b.Node)
	}
	if want := []string{"first->a", "second->b", "third->c"}; !slices.Equal(got, want) {
		t.Fatalf("binds read %v, want %v (oldest file first)", got, want)
	}
}
