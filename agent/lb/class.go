package lb

import (
	"encoding/json"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
)

// Class is what the drain does with the backends of a Service.
type Class int

const (
	// ClassNone: no load balancer the drain knows of; drained as usual.
	ClassNone Class = iota
	// ClassNEG: container-native load balancing (network endpoint groups).
	// The endpoints detach when their pods terminate, never because of the
	// node label, so these backends are evicted first, with the most grace.
	ClassNEG
	// ClassNode: a load balancer whose backends are nodes (GCE target pools
	// and instance groups): the node must leave it before these backends go.
	ClassNode
)

func (c Class) String() string {
	switch c {
	case ClassNEG:
		return "neg"
	case ClassNode:
		return "node"
	}
	return "none"
}

// AnnotationNEG is GKE's container-native load-balancing annotation on a
// Service, e.g. {"ingress": true} or {"exposed_ports": {"80": {}}}.
const AnnotationNEG = "cloud.google.com/neg"

// Selectors force Services into a class whatever their type, checked in this
// order: Ignore, Wait, EvictFirst. Nil selectors match nothing.
type Selectors struct {
	Ignore     labels.Selector
	Wait       labels.Selector
	EvictFirst labels.Selector
}

// ParseSelectors parses the three label selectors of the agent's flags; an
// empty string selects nothing.
func ParseSelectors(ignore, wait, evictFirst string) (Selectors, error) {
	var s Selectors
	for _, f := range []struct {
		flag, value string
		into        *labels.Selector
	}{{"--lb-ignore-selector", ignore, &s.Ignore}, {"--lb-wait-selector", wait, &s.Wait}, {"--lb-evict-first-selector", evictFirst, &s.EvictFirst}} {
		if f.value == "" {
			continue
		}
		sel, err := labels.Parse(f.value)
		if err != nil {
			return Selectors{}, fmt.Errorf("%s %q: %w", f.flag, f.value, err)
		}
		*f.into = sel
	}
	return s, nil
}

func matches(sel labels.Selector, l map[string]string) bool {
	return sel != nil && !sel.Empty() && sel.Matches(labels.Set(l))
}

// ClassOf returns the class of svc.
func (s Selectors) ClassOf(svc *corev1.Service) Class {
	switch {
	case matches(s.Ignore, svc.Labels):
		return ClassNone
	case matches(s.Wait, svc.Labels):
		return ClassNode
	case matches(s.EvictFirst, svc.Labels):
		return ClassNEG
	// The service controller manages exactly these (its wantsLoadBalancer):
	// a loadBalancerClass hands the Service to another controller, which
	// records no events the drain could wait for.
	case svc.Spec.Type == corev1.ServiceTypeLoadBalancer && svc.Spec.LoadBalancerClass == nil:
		return ClassNode
	case usesNEG(svc.Annotations[AnnotationNEG]):
		return ClassNEG
	}
	return ClassNone
}

// usesNEG reports whether a cloud.google.com/neg value asks for network
// endpoint groups. A value that does not parse asks for nothing: GKE's NEG
// controller ignores it too.
func usesNEG(v string) bool {
	if v == "" {
		return false
	}
	var neg struct {
		Ingress      bool                       `json:"ingress"`
		ExposedPorts map[string]json.RawMessage `json:"exposed_ports"`
	}
	if err := json.Unmarshal([]byte(v), &neg); err != nil {
		return false
	}
	return neg.Ingress || len(neg.ExposedPorts) > 0
}

// selects reports whether svc's selector picks pod, as the EndpointSlice
// controller decides: same namespace and a non-empty selector that matches.
func selects(svc *corev1.Service, pod *corev1.Pod) bool {
	if svc.Namespace != pod.Namespace || len(svc.Spec.Selector) == 0 {
		return false
	}
	return labels.SelectorFromValidatedSet(svc.Spec.Selector).Matches(labels.Set(pod.Labels))
}

// trimService keeps what the classes and the selector match read, before a
// Service enters the cache: the agent's memory must not grow with what
// tenants put in their Services.
func trimService(obj any) (any, error) {
	svc, ok := obj.(*corev1.Service)
	if !ok {
		return obj, nil // a deletion tombstone: the store only needs its key
	}
	t := &corev1.Service{}
	t.Name, t.Namespace, t.UID, t.ResourceVersion = svc.Name, svc.Namespace, svc.UID, svc.ResourceVersion
	t.Labels = svc.Labels
	if v, ok := svc.Annotations[AnnotationNEG]; ok {
		t.Annotations = map[string]string{AnnotationNEG: v}
	}
	t.Spec.Type = svc.Spec.Type
	t.Spec.Selector = svc.Spec.Selector
	t.Spec.LoadBalancerClass = svc.Spec.LoadBalancerClass
	t.Spec.ExternalTrafficPolicy = svc.Spec.ExternalTrafficPolicy
	return t, nil
}
