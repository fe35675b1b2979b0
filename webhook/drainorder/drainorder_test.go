package drainorder

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	jsonpatch "github.com/evanphx/json-patch/v5"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/webhook/review"
)

func create(t *testing.T, p *corev1.Pod) (*review.Request, []byte) {
	t.Helper()
	raw, err := json.Marshal(p)
	if err != nil {
		t.Fatal(err)
	}
	return &review.Request{UID: "u", Namespace: "apps", Operation: review.OperationCreate, Object: raw}, raw
}

func basePod() *corev1.Pod {
	p := &corev1.Pod{}
	p.GenerateName = "web-"
	p.Spec.Containers = []corev1.Container{{Name: "c", Image: "i"}}
	return p
}

func TestStampsTheDefaultOrder(t *testing.T) {
	tests := map[string]struct {
		mutate func(p *corev1.Pod)
		want   string
	}{
		"A plain pod without annotations is stamped regular.": {
			mutate: func(*corev1.Pod) {}, want: "regular",
		},
		"A pod with other annotations keeps them and is stamped regular.": {
			mutate: func(p *corev1.Pod) { p.Annotations = map[string]string{"team": "a/b~c"} }, want: "regular",
		},
		"A DaemonSet pod is stamped system and gets no toleration.": {
			mutate: func(p *corev1.Pod) {
				p.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "DaemonSet", Name: "ds", UID: "1", Controller: ptr.To(true)}}
			},
			want: "system",
		},
		"A pod of the node-critical priority class is stamped system.": {
			mutate: func(p *corev1.Pod) { p.Spec.PriorityClassName = nodemark.PriorityClassNodeCritical }, want: "system",
		},
		"A pod tolerating the taint for 20 seconds is stamped delayed:20s.": {
			mutate: func(p *corev1.Pod) {
				p.Spec.Tolerations = []corev1.Toleration{{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](20)}}
			},
			want: "delayed:20s",
		},
		"A pod tolerating every taint is stamped keep.": {
			mutate: func(p *corev1.Pod) { p.Spec.Tolerations = []corev1.Toleration{{Operator: corev1.TolerationOpExists}} }, want: "keep",
		},
	}
	g := New(corev1.TaintEffectNoSchedule)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := basePod()
			tc.mutate(p)
			req, raw := create(t, p)
			got := g.Admit(context.Background(), req)
			if !got.Allowed || got.Verdict != VerdictStamped || got.Patch == nil {
				t.Fatalf("got %+v", got)
			}
			patched := applyPatch(t, raw, got.Patch)
			if patched.Annotations[nodemark.AnnotationDefaultDrainOrder] != tc.want {
				t.Fatalf("stamped %q, want %q", patched.Annotations[nodemark.AnnotationDefaultDrainOrder], tc.want)
			}
			if _, owner := patched.Annotations[nodemark.AnnotationDrainOrder]; owner {
				t.Fatal("the stamp took the owner's key")
			}
			for k, v := range p.Annotations {
				if patched.Annotations[k] != v {
					t.Errorf("annotation %s lost", k)
				}
			}
			if len(patched.Spec.Tolerations) != len(p.Spec.Tolerations) {
				t.Errorf("tolerations changed: %v", patched.Spec.Tolerations)
			}
		})
	}
}

func applyPatch(t *testing.T, raw, patch []byte) *corev1.Pod {
	t.Helper()
	p, err := jsonpatch.DecodePatch(patch)
	if err != nil {
		t.Fatalf("decode patch %s: %v", patch, err)
	}
	out, err := p.Apply(raw)
	if err != nil {
		t.Fatalf("apply patch %s: %v", patch, err)
	}
	var pod corev1.Pod
	if err := json.Unmarshal(out, &pod); err != nil {
		t.Fatal(err)
	}
	return &pod
}

func TestOwnerValuesAreKeptOrRefused(t *testing.T) {
	tests := map[string]struct {
		value       string
		wantAllowed bool
		wantMessage string
	}{
		"A valid value the owner set is kept unchanged.":         {value: "delayed:5s", wantAllowed: true},
		"An owner asking to be kept is kept unchanged.":          {value: "keep", wantAllowed: true},
		"An unknown wave is refused with the parser's message.":  {value: "first", wantMessage: "want regular, system, keep or delayed:<duration>"},
		"A negative delay is refused with the parser's message.": {value: "delayed:-3s", wantMessage: "non-negative duration"},
	}
	g := New(corev1.TaintEffectNoSchedule)
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p := basePod()
			p.Annotations = map[string]string{nodemark.AnnotationDrainOrder: tc.value}
			req, _ := create(t, p)
			got := g.Admit(context.Background(), req)
			if got.Allowed != tc.wantAllowed || got.Patch != nil {
				t.Fatalf("got %+v", got)
			}
			if !tc.wantAllowed && (got.Code != 400 || !strings.Contains(got.Message, tc.wantMessage) || !strings.Contains(got.Message, nodemark.AnnotationDrainOrder)) {
				t.Fatalf("message %q (code %d) should name the annotation and contain %q", got.Message, got.Code, tc.wantMessage)
			}
		})
	}
}

func TestMirrorPodsAreLeftAlone(t *testing.T) {
	p := basePod()
	p.Annotations = map[string]string{corev1.MirrorPodAnnotationKey: "h"}
	req, _ := create(t, p)
	if got := New(corev1.TaintEffectNoSchedule).Admit(context.Background(), req); !got.Allowed || got.Patch != nil {
		t.Fatalf("got %+v", got)
	}
}
