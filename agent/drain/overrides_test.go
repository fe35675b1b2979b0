package drain

import (
	"strings"
	"testing"

	"termgate.dev/termgate/nodemark"
)

// TestAnOwnersOverrideIsRecordedOnItsPod: a pod whose drain-order
// annotation changes its wave gets one DrainOrderOverridden event naming
// the order it got and the default it replaced; an annotation that agrees
// with the default, or that is invalid (ignored), records nothing.
func TestAnOwnersOverrideIsRecordedOnItsPod(t *testing.T) {
	k := newKit(t,
		pod("late", withOrder("system")),
		pod("stays", withOrder("keep")),
		pod("plain", withOrder("regular")),
		pod("garbage", withOrder("soon")),
		pod("web"),
	)
	k.blocked["late"] = true // keeps the drain going for many passes
	_, _ = k.drive(k.drainer(Config{}), testMark, runOpts{})
	var overridden []string
	for _, e := range k.events() {
		if strings.Contains(e, " "+nodemark.EventDrainOrderOverridden+" ") {
			overridden = append(overridden, e)
		}
	}
	if len(overridden) != 2 {
		t.Fatalf("override events %q, want one for late and one for stays", overridden)
	}
	for _, want := range []string{"Drain order system from the pod's termgate.dev/drain-order annotation, instead of the default regular",
		"Drain order keep from the pod's termgate.dev/drain-order annotation, instead of the default regular"} {
		found := false
		for _, e := range overridden {
			found = found || strings.Contains(e, want)
		}
		if !found {
			t.Errorf("no event saying %q in %q", want, overridden)
		}
	}
}
