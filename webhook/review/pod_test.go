package review

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"

	"termgate.dev/termgate/nodemark"
)

func TestDecodePodKeepsOnlyTheAnnotationsTheRulesRead(t *testing.T) {
	raw := `{"metadata":{"name":"p","annotations":{"team":"web","` + nodemark.AnnotationDrainOrder + `":"system","` +
		corev1.MirrorPodAnnotationKey + `":"hash","big":"` + strings.Repeat("x", 1<<20) + `"}},"spec":{}}`
	pod, err := DecodePod([]byte(raw), "ns")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{nodemark.AnnotationDrainOrder: "system", corev1.MirrorPodAnnotationKey: "hash"}
	if len(pod.Annotations) != len(want) {
		t.Fatalf("kept %d annotations, want %d", len(pod.Annotations), len(want))
	}
	for k, v := range want {
		if pod.Annotations[k] != v {
			t.Fatalf("annotation %s = %q, want %q", k, pod.Annotations[k], v)
		}
	}
}

func TestDecodePodTellsAnnotationsAbsentFromNoneKept(t *testing.T) {
	tests := map[string]struct {
		raw     string
		wantNil bool
		wantErr string
	}{
		"No annotations at all gives a nil map.":               {raw: `{"metadata":{"name":"p"}}`, wantNil: true},
		"Null annotations give a nil map.":                     {raw: `{"metadata":{"name":"p","annotations":null}}`, wantNil: true},
		"Only foreign annotations give an empty map, not nil.": {raw: `{"metadata":{"name":"p","annotations":{"team":"web"}}}`},
		"An annotation value that is not a string is refused.": {raw: `{"metadata":{"name":"p","annotations":{"team":5}}}`, wantErr: "want a string"},
		"Annotations that are not an object are refused.":      {raw: `{"metadata":{"name":"p","annotations":["team"]}}`, wantErr: "want an object"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			pod, err := DecodePod([]byte(tc.raw), "ns")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if (pod.Annotations == nil) != tc.wantNil {
				t.Fatalf("annotations %v, want nil=%v", pod.Annotations, tc.wantNil)
			}
		})
	}
}
