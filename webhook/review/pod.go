package review

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	strictjson "sigs.k8s.io/json"
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
		Annotations     map[string]string       `json:"annotations"`
		OwnerReferences []metav1.OwnerReference `json:"ownerReferences"`
	} `json:"metadata"`
	Spec struct {
		NodeName          string              `json:"nodeName"`
		PriorityClassName string              `json:"priorityClassName"`
		Tolerations       []corev1.Toleration `json:"tolerations"`
	} `json:"spec"`
}

// DecodePod decodes the fields of raw that the drain-order policy and the
// gates read. namespace fills in an object that omits its own (a pod created
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
	pod.Annotations = s.Metadata.Annotations
	pod.OwnerReferences = s.Metadata.OwnerReferences
	pod.Spec.NodeName = s.Spec.NodeName
	pod.Spec.PriorityClassName = s.Spec.PriorityClassName
	pod.Spec.Tolerations = s.Spec.Tolerations
	return pod, nil
}
