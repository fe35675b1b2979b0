package manifestcheck_test

import (
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
)

// hostNetwork lists the workloads that may use the host's network: the
// agent, which must reach the VM's own metadata server (GKE's Workload
// Identity hides preemption notices from pods).
var hostNetwork = []string{"DaemonSet/termgate-agent/termgate-agent"}

// podSpec returns a workload's pod template spec.
func podSpec(t *testing.T, o *unstructured.Unstructured) corev1.PodSpec {
	t.Helper()
	raw, found, err := unstructured.NestedMap(o.Object, "spec", "template", "spec")
	if err != nil || !found {
		t.Fatalf("%s has no pod template: %v", id(o), err)
	}
	var spec corev1.PodSpec
	if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
		t.Fatalf("%s: %v", id(o), err)
	}
	return spec
}

// TestEveryWorkloadKeepsItsLimitsAndSecuritySettings fails when a
// container loses a resource request or its memory limit, or a pod or
// container loses a security setting: non-root with a set user, no
// privilege escalation, a read-only root, every capability dropped and none
// added, RuntimeDefault seccomp, no host paths, ports, PID or IPC, and the
// host network only where hostNetwork allows it.
func TestEveryWorkloadKeepsItsLimitsAndSecuritySettings(t *testing.T) {
	forEachInstall(t, func(t *testing.T, objs []*unstructured.Unstructured) {
		workloads := ofKind(objs, "Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "ReplicaSet", "Pod")
		if len(workloads) < 2 {
			t.Fatalf("found %d workloads, want at least the agent and the webhook", len(workloads))
		}
		for _, o := range workloads {
			spec := podSpec(t, o)
			w := id(o)
			if spec.HostNetwork && !slices.Contains(hostNetwork, w) {
				t.Errorf("%s uses the host network", w)
			}
			if spec.HostPID || spec.HostIPC {
				t.Errorf("%s shares the host's PID or IPC namespace", w)
			}
			if spec.PriorityClassName == "" {
				t.Errorf("%s has no PriorityClass", w)
			}
			for _, v := range spec.Volumes {
				if v.HostPath != nil {
					t.Errorf("%s mounts host path %s", w, v.HostPath.Path)
				}
			}
			psc := spec.SecurityContext
			if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser == 0 {
				t.Errorf("%s may run as root: pod securityContext %+v", w, psc)
			}
			if psc == nil || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Errorf("%s has no RuntimeDefault seccomp profile", w)
			}
			for _, c := range append(slices.Clone(spec.InitContainers), spec.Containers...) {
				checkContainer(t, w+" container "+c.Name, c)
			}
		}
	})
}

func checkContainer(t *testing.T, where string, c corev1.Container) {
	t.Helper()
	r := c.Resources
	if r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() {
		t.Errorf("%s lacks a CPU or memory request: %v", where, r.Requests)
	}
	if r.Limits.Memory().IsZero() {
		t.Errorf("%s has no memory limit", where)
	}
	for _, p := range c.Ports {
		if p.HostPort != 0 {
			t.Errorf("%s binds host port %d", where, p.HostPort)
		}
	}
	sc := c.SecurityContext
	if sc == nil {
		t.Errorf("%s has no securityContext", where)
		return
	}
	if sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation {
		t.Errorf("%s allows privilege escalation", where)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("%s is privileged", where)
	}
	if sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem {
		t.Errorf("%s has a writable root filesystem", where)
	}
	if sc.Capabilities == nil || !slices.Contains(sc.Capabilities.Drop, "ALL") || len(sc.Capabilities.Add) > 0 {
		t.Errorf("%s does not drop every capability (or adds some): %+v", where, sc.Capabilities)
	}
	if sc.RunAsUser != nil && *sc.RunAsUser == 0 {
		t.Errorf("%s runs as root", where)
	}
}

// TestTheWebhookRunsInARestrictedNamespaceAndTheAgentAlone: the namespaces'
// Pod Security levels are what make the split hold. Every workload but the
// agent runs where the restricted standard is enforced; the agent's
// privileged namespace holds nothing but the agent's own objects.
func TestTheWebhookRunsInARestrictedNamespaceAndTheAgentAlone(t *testing.T) {
	agentOnly := []string{"ServiceAccount/termgate-agent", "DaemonSet/termgate-agent", "ResourceQuota/termgate-critical-pods"}
	forEachInstall(t, func(t *testing.T, objs []*unstructured.Unstructured) {
		enforce := map[string]string{}
		for _, ns := range ofKind(objs, "Namespace") {
			enforce[ns.GetName()] = ns.GetLabels()["pod-security.kubernetes.io/enforce"]
		}
		agent := find(t, objs, "DaemonSet", "termgate-agent")
		if got := enforce[agent.GetNamespace()]; got != "privileged" {
			t.Errorf("the agent's namespace %s enforces %q, want privileged (hostNetwork)", agent.GetNamespace(), got)
		}
		for _, o := range ofKind(objs, "Deployment", "DaemonSet", "StatefulSet", "Job", "CronJob", "ReplicaSet", "Pod") {
			if o == agent {
				continue
			}
			if got := enforce[o.GetNamespace()]; got != "restricted" {
				t.Errorf("%s runs in namespace %s, which enforces %q, want restricted", id(o), o.GetNamespace(), got)
			}
		}
		for _, o := range objs {
			if o.GetNamespace() == agent.GetNamespace() && !slices.Contains(agentOnly, o.GetKind()+"/"+o.GetName()) {
				t.Errorf("%s is in the agent's privileged namespace: whoever manages it could run pods with the agent's powers", id(o))
			}
		}
		if len(enforce) != 2 {
			t.Errorf("namespaces %v, want the webhook's and the agent's", enforce)
		}
	})
}
