package nodemark_test

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"termgate.dev/termgate/nodemark"
)

func TestDefaultDrainOrder(t *testing.T) {
	daemonOwned := []metav1.OwnerReference{{Kind: "DaemonSet", Name: "ds", Controller: ptr.To(true)}}
	cases := map[string]struct {
		pod  corev1.Pod
		want nodemark.DrainOrder
	}{
		"an ordinary pod is drained in the regular wave": {
			pod:  pod("default", ""),
			want: nodemark.DrainOrder{Wave: nodemark.WaveRegular},
		},
		"a kube-system pod is drained last": {
			pod:  pod("kube-system", ""),
			want: nodemark.DrainOrder{Wave: nodemark.WaveSystem},
		},
		"a system-node-critical pod is drained last": {
			pod:  pod("apps", nodemark.PriorityClassNodeCritical),
			want: nodemark.DrainOrder{Wave: nodemark.WaveSystem},
		},
		"a system-cluster-critical pod is drained last": {
			pod:  pod("apps", nodemark.PriorityClassClusterCritical),
			want: nodemark.DrainOrder{Wave: nodemark.WaveSystem},
		},
		"a DaemonSet pod is drained last": {
			pod:  with(pod("apps", ""), func(p *corev1.Pod) { p.OwnerReferences = daemonOwned }),
			want: nodemark.DrainOrder{Wave: nodemark.WaveSystem},
		},
		"a pod tolerating every taint is kept": {
			pod:  tolerating(pod("apps", ""), corev1.Toleration{Operator: corev1.TolerationOpExists}),
			want: nodemark.DrainOrder{Wave: nodemark.WaveKeep},
		},
		"a DaemonSet pod tolerating every taint is kept": {
			pod: tolerating(with(pod("apps", ""), func(p *corev1.Pod) { p.OwnerReferences = daemonOwned }),
				corev1.Toleration{Operator: corev1.TolerationOpExists}),
			want: nodemark.DrainOrder{Wave: nodemark.WaveKeep},
		},
		"a pod tolerating the termination taint's NoSchedule effect is kept": {
			pod:  tolerating(pod("apps", ""), corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}),
			want: nodemark.DrainOrder{Wave: nodemark.WaveKeep},
		},
		"a pod tolerating the termination taint for 10s is evicted 10s after the notice": {
			pod: tolerating(pod("apps", ""), corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpExists,
				Effect: corev1.TaintEffectNoExecute, TolerationSeconds: ptr.To[int64](10)}),
			want: nodemark.DrainOrder{Wave: nodemark.WaveDelayed, After: 10 * time.Second},
		},
		"a toleration of another taint changes nothing": {
			pod:  tolerating(pod("apps", ""), corev1.Toleration{Key: "gpu", Operator: corev1.TolerationOpExists}),
			want: nodemark.DrainOrder{Wave: nodemark.WaveRegular},
		},
		"a toleration of the taint with the wrong value changes nothing": {
			pod: tolerating(pod("apps", ""), corev1.Toleration{Key: nodemark.TaintKey, Operator: corev1.TolerationOpEqual,
				Value: "Preempted-not", Effect: corev1.TaintEffectNoSchedule}),
			want: nodemark.DrainOrder{Wave: nodemark.WaveRegular},
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if got := nodemark.DefaultDrainOrder(&tc.pod, corev1.TaintEffectNoSchedule); got != tc.want {
				t.Fatalf("got %v, want %v", got, tc.want)
			}
		})
	}
}

func TestDrainOrderAnnotationWinsOverDefaults(t *testing.T) {
	p := pod("kube-system", "")
	p.Annotations = map[string]string{nodemark.AnnotationDrainOrder: "regular"}
	if got := nodemark.DrainOrderFor(&p, corev1.TaintEffectNoSchedule); got.Wave != nodemark.WaveRegular {
		t.Fatalf("annotated kube-system pod got %v, want regular", got)
	}
	p.Annotations[nodemark.AnnotationDrainOrder] = "soon-ish"
	if got := nodemark.DrainOrderFor(&p, corev1.TaintEffectNoSchedule); got.Wave != nodemark.WaveSystem {
		t.Fatalf("invalid annotation: got %v, want the default (system)", got)
	}
}

func TestDrainOrderRoundTrips(t *testing.T) {
	for _, o := range []nodemark.DrainOrder{
		{Wave: nodemark.WaveRegular}, {Wave: nodemark.WaveSystem}, {Wave: nodemark.WaveKeep},
		{Wave: nodemark.WaveDelayed, After: 90 * time.Second},
	} {
		got, err := nodemark.ParseDrainOrder(o.String())
		if err != nil || got != o {
			t.Errorf("ParseDrainOrder(%q) = %v, %v; want %v", o.String(), got, err, o)
		}
	}
	for _, bad := range []string{"", "Regular", "delayed", "delayed:", "delayed:-3s", "delayed:soon", "keep "} {
		if _, err := nodemark.ParseDrainOrder(bad); err == nil {
			t.Errorf("ParseDrainOrder(%q) accepted an invalid value", bad)
		}
	}
}

func FuzzParseDrainOrder(f *testing.F) {
	for _, s := range []string{"regular", "system", "keep", "delayed:10s", "delayed:1h2m", "x"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		o, err := nodemark.ParseDrainOrder(s)
		if err != nil {
			return
		}
		again, err := nodemark.ParseDrainOrder(o.String())
		if err != nil || again != o {
			t.Fatalf("%q parsed to %v, which does not round-trip (%v, %v)", s, o, again, err)
		}
	})
}

func pod(ns, priorityClass string) corev1.Pod {
	return corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "p"},
		Spec:       corev1.PodSpec{PriorityClassName: priorityClass},
	}
}

func with(p corev1.Pod, f func(*corev1.Pod)) corev1.Pod { f(&p); return p }

func tolerating(p corev1.Pod, t corev1.Toleration) corev1.Pod {
	p.Spec.Tolerations = append(p.Spec.Tolerations, t)
	return p
}
