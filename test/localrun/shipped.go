package localrun

// What the shipped workloads give termgate's containers, read from
// manifests/static/self-managed: the launcher starts every agent and webhook with it.

import (
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"

	"termgate.dev/termgate/test/manifest"
)

// Container is what a shipped workload gives its termgate container.
type Container struct {
	// Args are the container's arguments without the subcommand and
	// without the listen addresses, which localrun picks on loopback,
	// with $(VAR) expanded from the container's literal env as the kubelet
	// expands it.
	Args []string
	// Env holds the container's literal variables and those the manifest
	// fills from the container's own resource limits (MEMORY_LIMIT), in
	// bytes, as the kubelet would. Variables from the downward API
	// (NODE_NAME, POD_NAME) are the launcher's to set.
	Env map[string]string
	// MemoryLimit is limits.memory in bytes (0 when unset).
	MemoryLimit int64
}

// Environ returns Env as NAME=value pairs, sorted by name, for a process's
// environment.
func (c Container) Environ() []string {
	var env []string
	for _, k := range slices.Sorted(maps.Keys(c.Env)) {
		env = append(env, k+"="+c.Env[k])
	}
	return env
}

// ShippedAgent reads the agent container of manifests/static/self-managed/agent-daemonset.yaml.
func ShippedAgent() (Container, error) {
	var ds appsv1.DaemonSet
	if err := readShipped("agent-daemonset.yaml", "DaemonSet", &ds); err != nil {
		return Container{}, err
	}
	return container(ds.Spec.Template.Spec, "agent")
}

// ShippedWebhook reads the webhook container of manifests/static/self-managed/webhook-deployment.yaml.
func ShippedWebhook() (Container, error) {
	var d appsv1.Deployment
	if err := readShipped("webhook-deployment.yaml", "Deployment", &d); err != nil {
		return Container{}, err
	}
	return container(d.Spec.Template.Spec, "webhook")
}

// readShipped reads the one object of kind in manifests/static/self-managed/name.
func readShipped(name, kind string, into runtime.Object) error {
	path, err := manifest.Shipped(manifest.StaticDir, name)
	if err != nil {
		return err
	}
	objs, err := manifest.ReadFile(path)
	if err != nil {
		return err
	}
	for _, o := range objs {
		if o.GetKind() == kind {
			return manifest.Into(o, into)
		}
	}
	return fmt.Errorf("%s holds no %s", path, kind)
}

// listenFlags are replaced by loopback addresses the launcher chooses.
var listenFlags = []string{"--listen", "--bind-address", "--health-probe-bind-address", "--metrics-bind-address", "--cert-dir"}

func container(spec corev1.PodSpec, sub string) (Container, error) {
	for _, c := range spec.Containers {
		if len(c.Args) == 0 || c.Args[0] != sub {
			continue
		}
		out := Container{Env: map[string]string{}}
		if q, ok := c.Resources.Limits[corev1.ResourceMemory]; ok {
			out.MemoryLimit = q.Value()
		}
		for _, e := range c.Env {
			if e.ValueFrom == nil {
				out.Env[e.Name] = e.Value
			}
			if e.ValueFrom != nil && e.ValueFrom.ResourceFieldRef != nil && e.ValueFrom.ResourceFieldRef.Resource == "limits.memory" {
				if out.MemoryLimit == 0 {
					return Container{}, fmt.Errorf("container %s: %s comes from limits.memory, which is unset", c.Name, e.Name)
				}
				out.Env[e.Name] = strconv.FormatInt(out.MemoryLimit, 10)
			}
		}
		for _, a := range c.Args[1:] {
			name, _, _ := strings.Cut(a, "=")
			if slices.Contains(listenFlags, name) {
				continue
			}
			out.Args = append(out.Args, expand(a, out.Env))
		}
		return out, nil
	}
	return Container{}, fmt.Errorf("no container running %q in the shipped manifest", sub)
}

// expand replaces each $(NAME) in arg by env's value, as the kubelet expands
// a container's arguments from its environment.
func expand(arg string, env map[string]string) string {
	for k, v := range env {
		arg = strings.ReplaceAll(arg, "$("+k+")", v)
	}
	return arg
}
