package localrun

import (
	"slices"
	"strings"
	"testing"
)

// The launcher hands every agent and webhook the shipped containers'
// arguments: expanded as the kubelet expands them, without the addresses it
// picks itself, with the environment the limits fill.
func TestTheShippedContainersAreWhatTheLauncherStarts(t *testing.T) {
	for _, tc := range []struct {
		read func() (Container, error)
		want []string
	}{
		{ShippedAgent, []string{"--preemption-notice=30s", "--cloud=auto"}},
		{ShippedWebhook, []string{"--agent-username=system:serviceaccount:termgate-agent:termgate-agent", "--webhook-config-name=termgate"}},
	} {
		c, err := tc.read()
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range tc.want {
			if !slices.Contains(c.Args, w) {
				t.Errorf("args %v lack %s", c.Args, w)
			}
		}
		for _, a := range c.Args {
			name, _, _ := strings.Cut(a, "=")
			if slices.Contains(listenFlags, name) || strings.Contains(a, "$(") {
				t.Errorf("arg %s: the launcher sets listen addresses itself, and variables must be expanded", a)
			}
		}
		if c.MemoryLimit == 0 || c.Env["MEMORY_LIMIT"] == "" {
			t.Errorf("memory limit %d, MEMORY_LIMIT %q: want both from the container's limit", c.MemoryLimit, c.Env["MEMORY_LIMIT"])
		}
	}
}
