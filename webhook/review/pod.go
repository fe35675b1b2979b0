package review

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"slices"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	strictjson "sigs.k8s.io/json"

	"termgate.dev/termgate/nodemark"
)

// PodGetter reads a pod through the API; gates call it only on their slow
// paths.
type PodGetter interface {
	GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error)
}

// slimPod is the subset of a Pod that termgate's rules read. Decoding it
// instead of a full corev1.Pod skips containers, volumes and status.
type slimPod struct {
	Metadata *struct {
		Name            string                  `json:"name"`
		GenerateName    string                  `json:"generateName"`
		Namespace       string                  `json:"namespace"`
		UID             string                  `json:"uid"`
		Annotations     readAnnotations         `json:"annotations"`
		OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		NodeName          string              `json:"nodeName"`
		PriorityClassName string              `json:"priorityClassName"`
		Tolerations       []corev1.Toleration `json:"tolerations"`
	} `json:"spec"`
}

// DecodePod decodes the fields of raw that the drain-order policy and the
// gates read. Of the annotations only nodemark.PodAnnotationsRead are kept
// (pod.Annotations is non-nil whenever the pod has annotations at all). namespace fills in an object that omits its own (a pod created
// through a namespaced URL may).
func DecodePod(raw []byte, namespace string) (*corev1.Pod, error) {
	if len(raw) == 0 {
		return nil, fmt.Errorf("review carries no object")
	}
	var s slimPod
	if err := strictjson.UnmarshalCaseSensitivePreserveInts(raw, &s); err != nil {
		return nil, fmt.Errorf("decode pod: %w", err)
	}
	if s.Metadata == nil {
		// The API server always sends metadata; a patch could not add to it.
		return nil, fmt.Errorf("decode pod: object has no metadata")
	}
	pod := &corev1.Pod{}
	pod.Name = s.Metadata.Name
	pod.GenerateName = s.Metadata.GenerateName
	pod.Namespace = s.Metadata.Namespace
	if pod.Namespace == "" {
		pod.Namespace = namespace
	}
	pod.UID = types.UID(s.Metadata.UID)
	pod.Annotations = s.Metadata.Annotations.kept
	pod.OwnerReferences = s.Metadata.OwnerReferences
	pod.Spec.NodeName = s.Spec.NodeName
	pod.Spec.PriorityClassName = s.Spec.PriorityClassName
	pod.Spec.Tolerations = s.Spec.Tolerations
	return pod, nil
}

// readAnnotations keeps only the annotations termgate's rules read. A
// review may carry megabytes of annotations (the API server validates
// their size only after mutating webhooks, and anything can POST to the
// webhook): building a map of all of them would multiply the body's size
// in memory, so every other value is skipped as it is read.
type readAnnotations struct{ kept map[string]string }

// UnmarshalJSON reads a JSON object of strings, or null.
func (a *readAnnotations) UnmarshalJSON(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	tok, err := dec.Token()
	if err != nil {
		return fmt.Errorf("annotations: %w", err)
	}
	if tok == nil {
		return nil
	}
	if d, ok := tok.(json.Delim); !ok || d != '{' {
		return fmt.Errorf("annotations: want an object, got %v", tok)
	}
	// Non-nil even when nothing is kept: the drain-order patch needs to
	// know whether the pod has annotations at all.
	a.kept = make(map[string]string, len(nodemark.PodAnnotationsRead))
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return fmt.Errorf("annotations: %w", err)
		}
		key, _ := tok.(string) // object keys are always strings
		tok, err = dec.Token()
		if err != nil {
			return fmt.Errorf("annotations: %w", err)
		}
		value, ok := tok.(string)
		if !ok {
			return fmt.Errorf("annotation %q: want a string value, got %v", key, tok)
		}
		if slices.Contains(nodemark.PodAnnotationsRead, key) {
			a.kept[key] = value
		}
	}
	return nil
}
