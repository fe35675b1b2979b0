// Package mark writes and removes termgate's marks on the agent's own Node:
// annotations, the termination taint, the load-balancer exclusion label and
// the TerminationImminent condition.
package mark

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes"
	"k8s.io/utils/clock"

	"termgate.dev/termgate/nodemark"
)

// Marker marks and unmarks one Node.
//
// Taints are an atomic list in the Node API: any patch that adds one must
// send the whole list. To never lose a taint another writer adds at the same
// moment, the patch carries the resourceVersion it was computed from and the
// API server refuses it with 409 if the Node moved on; Marker then re-reads
// and retries. Annotations and labels merge key by key. The condition lives
// in status and merges by type, so it is a second, conflict-free patch,
// written after the taint that actually steers the scheduler.
type Marker struct {
	client kubernetes.Interface
	clock  clock.Clock
	node   string
	dryRun bool

	// The caller's informer copy lags behind the Marker's own writes by a
	// watch round trip; a mark right after an unmark would then be computed
	// from a stale Node and bounce off a 409. The Marker remembers the Node
	// its last write returned and the resourceVersions that write replaced,
	// and uses its own copy while the caller's is one of those. Only
	// equality of resourceVersions is used, as the API requires.
	mu         sync.Mutex
	written    *corev1.Node
	superseded map[string]bool
	extras     Extras // optional load-balancer marks (extras.go)
}

// New returns a Marker for node.
func New(client kubernetes.Interface, clk clock.Clock, node string, dryRun bool) *Marker {
	return &Marker{client: client, clock: clk, node: node, dryRun: dryRun, superseded: map[string]bool{}}
}

// base returns the freshest known view of the Node: the caller's, unless it
// predates the Marker's own last write.
func (mk *Marker) base(current *corev1.Node) *corev1.Node {
	mk.mu.Lock()
	defer mk.mu.Unlock()
	if current != nil && mk.written != nil && mk.superseded[current.ResourceVersion] {
		return mk.written
	}
	return current
}

// remember records a write that turned the Node at resourceVersion before
// into after.
func (mk *Marker) remember(before string, after *corev1.Node) {
	mk.mu.Lock()
	defer mk.mu.Unlock()
	if len(mk.superseded) > 64 { // the caller caught up long ago
		clear(mk.superseded)
	}
	if before != "" {
		mk.superseded[before] = true
	}
	if mk.written != nil {
		mk.superseded[mk.written.ResourceVersion] = true
	}
	mk.written = after
}

// maxConflicts bounds the 409 retries; each re-reads the node first.
const maxConflicts = 10

// callTimeout bounds each API call of the mark path: a black-holed
// connection must fail fast so that the reconcile retries, not hang for the
// transport's tens of seconds while the notice's deadline runs out.
const callTimeout = 5 * time.Second

// bounded runs one API call under callTimeout.
func bounded[T any](ctx context.Context, call func(context.Context) (T, error)) (T, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	return call(ctx)
}

// Mark writes m's annotations, taint and label in one guarded patch (then
// call EnsureCondition). current is the caller's latest
// view of the Node (an informer's copy), saving a GET on the fast path.
func (mk *Marker) Mark(ctx context.Context, current *corev1.Node, m nodemark.Mark, effect corev1.TaintEffect) error {
	if mk.dryRun {
		return nil
	}
	err := mk.patchWithRetry(ctx, current, func(n *corev1.Node) ([]byte, error) { return markPatch(n, m, effect) })
	if err != nil {
		return fmt.Errorf("mark node %s: %w", mk.node, err)
	}
	mk.applyExtras(ctx, m)
	return nil
}

// EnsureCondition records m as the node's TerminationImminent condition
// unless the Node already carries it. It is a separate write, after Mark,
// because status is its own subresource; the taint that steers the
// scheduler must not wait for it. current is the caller's view of the Node:
// right after Mark it is often the copy from before the Marker's own
// condition write, so the check uses the freshest copy the Marker knows
// (base), or every reconcile until the informer caught up would write the
// condition again.
func (mk *Marker) EnsureCondition(ctx context.Context, current *corev1.Node, m nodemark.Mark) error {
	if mk.dryRun {
		return nil
	}
	if n := mk.base(current); n != nil && hasCondition(n, m) {
		return nil
	}
	if err := mk.patchCondition(ctx, conditionFor(m, mk.clock.Now())); err != nil {
		return fmt.Errorf("mark node %s: %w", mk.node, err)
	}
	return nil
}

// Unmark removes exactly what Mark added. The condition goes first: the
// annotations are what tell a restarted agent that there is something to
// remove, so if the process stops between the two writes, the next agent
// still sees the mark and finishes the unmark.
func (mk *Marker) Unmark(ctx context.Context, current *corev1.Node) error {
	if mk.dryRun {
		return nil
	}
	if err := mk.removeCondition(ctx); err != nil {
		return fmt.Errorf("unmark node %s: remove condition: %w", mk.node, err)
	}
	if err := mk.patchWithRetry(ctx, current, removeExtrasPatch); err != nil {
		return fmt.Errorf("unmark node %s: remove the load-balancer marks: %w", mk.node, err)
	}
	// current is still right: base uses the Marker's own copy once a write superseded it.
	if err := mk.patchWithRetry(ctx, current, unmarkPatch); err != nil {
		return fmt.Errorf("unmark node %s: %w", mk.node, err)
	}
	return nil
}

// RemoveStaleCondition removes a TerminationImminent condition from a Node
// that carries no mark (left by an unmark that an older agent cut short);
// it makes no call when there is none.
func (mk *Marker) RemoveStaleCondition(ctx context.Context, current *corev1.Node) error {
	if mk.dryRun {
		return nil
	}
	n := mk.base(current)
	if n == nil || !hasConditionType(n) {
		return nil
	}
	if err := mk.removeCondition(ctx); err != nil {
		return fmt.Errorf("node %s: remove stale condition: %w", mk.node, err)
	}
	return nil
}

func (mk *Marker) removeCondition(ctx context.Context) error {
	del := map[string]any{"status": map[string]any{"conditions": []map[string]any{
		{"type": nodemark.ConditionType, "$patch": "delete"},
	}}}
	body, _ := json.Marshal(del)
	after, err := mk.patchStatus(ctx, body)
	if err != nil {
		return err
	}
	mk.remember("", after)
	return nil
}

func hasConditionType(node *corev1.Node) bool {
	for _, c := range node.Status.Conditions {
		if c.Type == nodemark.ConditionType {
			return true
		}
	}
	return false
}

func (mk *Marker) patchWithRetry(ctx context.Context, node *corev1.Node, build func(*corev1.Node) ([]byte, error)) error {
	var err error
	node = mk.base(node)
	for range maxConflicts {
		if node == nil {
			node, err = bounded(ctx, func(ctx context.Context) (*corev1.Node, error) {
				return mk.client.CoreV1().Nodes().Get(ctx, mk.node, metav1.GetOptions{})
			})
			if err != nil {
				return fmt.Errorf("read node: %w", err)
			}
		}
		body, berr := build(node)
		if berr != nil {
			return berr
		}
		if body == nil {
			return nil // nothing to change
		}
		var after *corev1.Node
		after, err = bounded(ctx, func(ctx context.Context) (*corev1.Node, error) {
			return mk.client.CoreV1().Nodes().Patch(ctx, mk.node, types.StrategicMergePatchType, body, metav1.PatchOptions{FieldManager: nodemark.FieldManager})
		})
		if err == nil {
			mk.remember(node.ResourceVersion, after)
		}
		if !apierrors.IsConflict(err) {
			return err
		}
		node = nil // stale view: re-read and rebuild
	}
	return fmt.Errorf("still conflicting after %d attempts: %w", maxConflicts, err)
}

func (mk *Marker) patchCondition(ctx context.Context, cond corev1.NodeCondition) error {
	body, err := json.Marshal(map[string]any{"status": map[string]any{"conditions": []corev1.NodeCondition{cond}}})
	if err != nil {
		return fmt.Errorf("encode condition: %w", err)
	}
	after, err := mk.patchStatus(ctx, body)
	if err != nil {
		return fmt.Errorf("set condition: %w", err)
	}
	mk.remember("", after)
	return nil
}

// patchStatus sends a strategic-merge patch of the Node's status.
func (mk *Marker) patchStatus(ctx context.Context, body []byte) (*corev1.Node, error) {
	return bounded(ctx, func(ctx context.Context) (*corev1.Node, error) {
		return mk.client.CoreV1().Nodes().Patch(ctx, mk.node, types.StrategicMergePatchType, body, metav1.PatchOptions{FieldManager: nodemark.FieldManager}, "status")
	})
}

// markPatch builds the one patch that marks the node.
func markPatch(n *corev1.Node, m nodemark.Mark, effect corev1.TaintEffect) ([]byte, error) {
	annotations := map[string]any{}
	for k, v := range m.Annotations() {
		annotations[k] = v
	}
	// Load balancers lose the node only once it drains: an announced
	// window may be days ahead, and services with externalTrafficPolicy
	// Local would lose the node's traffic until then.
	labels := map[string]any{}
	_, has := n.Labels[nodemark.LabelExcludeFromLB]
	added := n.Annotations[nodemark.AnnotationLBLabelAdded] == "true"
	switch {
	case m.Terminating() && !has:
		labels[nodemark.LabelExcludeFromLB] = "true"
		annotations[nodemark.AnnotationLBLabelAdded] = "true"
	case !m.Terminating() && added:
		labels[nodemark.LabelExcludeFromLB] = nil
		annotations[nodemark.AnnotationLBLabelAdded] = nil
	}
	taints := withoutOurTaint(n.Spec.Taints)
	taints = append(taints, corev1.Taint{Key: nodemark.TaintKey, Value: string(m.Reason), Effect: effect})
	return nodePatch(n, annotations, labels, taints)
}

// nodePatch is a strategic-merge patch guarded by n's resourceVersion: the
// whole taint list (atomic in the API), annotations and labels key by key
// (nil deletes a key).
func nodePatch(n *corev1.Node, annotations, labels map[string]any, taints []corev1.Taint) ([]byte, error) {
	if taints == nil {
		taints = []corev1.Taint{}
	}
	return json.Marshal(map[string]any{
		"metadata": map[string]any{
			"resourceVersion": n.ResourceVersion,
			"annotations":     annotations,
			"labels":          labels,
		},
		"spec": map[string]any{"taints": taints},
	})
}

// unmarkPatch removes the mark; nil when there is nothing of ours left.
func unmarkPatch(n *corev1.Node) ([]byte, error) {
	annotations := map[string]any{}
	for _, k := range nodemark.OwnedAnnotationKeys {
		if _, ok := n.Annotations[k]; ok {
			annotations[k] = nil
		}
	}
	labels := map[string]any{}
	if n.Annotations[nodemark.AnnotationLBLabelAdded] == "true" {
		labels[nodemark.LabelExcludeFromLB] = nil
	}
	taints := withoutOurTaint(n.Spec.Taints)
	if len(annotations) == 0 && len(labels) == 0 && len(taints) == len(n.Spec.Taints) {
		return nil, nil
	}
	return nodePatch(n, annotations, labels, taints)
}

func withoutOurTaint(taints []corev1.Taint) []corev1.Taint {
	var out []corev1.Taint
	for _, t := range taints {
		if t.Key != nodemark.TaintKey {
			out = append(out, t)
		}
	}
	return out
}

// hasCondition reports whether node already carries m's condition.
func hasCondition(node *corev1.Node, m nodemark.Mark) bool {
	want := conditionFor(m, time.Time{})
	for _, c := range node.Status.Conditions {
		if c.Type == want.Type {
			return c.Status == want.Status && c.Reason == want.Reason && c.Message == want.Message
		}
	}
	return false
}

func conditionFor(m nodemark.Mark, now time.Time) corev1.NodeCondition {
	return corev1.NodeCondition{
		Type:               nodemark.ConditionType,
		Status:             corev1.ConditionTrue,
		Reason:             string(m.Reason),
		Message:            fmt.Sprintf("%s: node %s; deadline %s", m.Reason, m.State, m.Deadline.UTC().Format("2006-01-02T15:04:05.000Z")),
		LastHeartbeatTime:  metav1.NewTime(now),
		LastTransitionTime: metav1.NewTime(now),
	}
}
