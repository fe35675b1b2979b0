package drain

import (
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"termgate.dev/termgate/nodemark"
)

func TestDeleteGrace(t *testing.T) {
	deadline := notice.Add(30 * time.Second)
	cases := []struct {
		name       string
		pod        *corev1.Pod
		now        time.Time
		want       int64
		wantUseful bool
	}{
		{"a pod whose grace fits keeps it", pod("p", withGrace(5)), notice.Add(20 * time.Second), 5, true},
		{"a long grace is clamped to the whole seconds left", pod("p", withGrace(30)), notice.Add(20*time.Second + 500*time.Millisecond), 9, true},
		{"no time left still gives the minimum grace", pod("p"), deadline.Add(-100 * time.Millisecond), 1, true},
		{"a zero grace is raised to the minimum so the kubelet still stops the pod", pod("p", withGrace(0)), notice, 1, true},
		{"a pod deleted with a huge grace is shortened from its deletion start",
			pod("p", beingDeleted(notice.Add(2*time.Second), 3600)), notice.Add(20 * time.Second), 28, true},
		{"a pod whose deletion already ends by the deadline is not deleted again",
			pod("p", beingDeleted(notice, 10)), notice.Add(20 * time.Second), 0, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, useful := deleteGrace(tc.pod, tc.now, deadline, time.Second)
			if got != tc.want || useful != tc.wantUseful {
				t.Errorf("deleteGrace = %d, %v; want %d, %v", got, useful, tc.want, tc.wantUseful)
			}
		})
	}
}

func TestEvictionGrace(t *testing.T) {
	deadline := notice.Add(30 * time.Second)
	cases := []struct {
		name string
		pod  *corev1.Pod
		now  time.Time
		want *int64
	}{
		{"a grace that fits the window is left to the pod", pod("p", withGrace(30)), notice, nil},
		{"a grace longer than the window becomes the time left", pod("p", withGrace(90)), notice.Add(time.Second), ptr(int64(29))},
		{"past the deadline the minimum grace is asked", pod("p"), deadline.Add(time.Second), ptr(int64(1))},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := evictionGrace(tc.pod, tc.now, deadline, time.Second)
			if (got == nil) != (tc.want == nil) || (got != nil && *got != *tc.want) {
				t.Errorf("evictionGrace = %v, want %v", deref(got), deref(tc.want))
			}
		})
	}
}

// FuzzDeleteGrace checks the clamp's promises for any pod and instant: at
// least the minimum grace; a deletion that can end by the deadline does; a
// repeated delete of a terminating pod is only sent when it shortens it.
func FuzzDeleteGrace(f *testing.F) {
	f.Add(int64(30), int64(20_000), int64(-1), int64(0))
	f.Add(int64(3600), int64(29_999), int64(0), int64(3600))
	f.Add(int64(0), int64(-5_000), int64(5_000), int64(1))
	f.Fuzz(func(t *testing.T, own, nowMs, delStartMs, delGrace int64) {
		deadline := notice.Add(30 * time.Second)
		now := notice.Add(time.Duration(nowMs%100_000) * time.Millisecond)
		p := pod("p", withGrace(own%100_000))
		var start time.Time
		if delStartMs >= 0 && delGrace > 0 {
			delGrace %= 100_000
			start = notice.Add(time.Duration(delStartMs%100_000) * time.Millisecond).Truncate(time.Second)
			p.DeletionTimestamp = &metav1.Time{Time: start.Add(time.Duration(delGrace) * time.Second)}
			p.DeletionGracePeriodSeconds = &delGrace
		}
		g, useful := deleteGrace(p, now, deadline, time.Second)
		if !useful {
			if !terminating(p) {
				t.Fatal("a delete of a running pod was judged useless")
			}
			return
		}
		if g < 1 {
			t.Fatalf("grace %d below the minimum", g)
		}
		if terminating(p) {
			if g >= delGrace {
				t.Fatalf("grace %d does not shorten %d", g, delGrace)
			}
		} else {
			start = now
		}
		if end := start.Add(time.Duration(g) * time.Second); end.After(deadline) && !start.Add(time.Second).After(deadline) {
			t.Fatalf("deletion from %s with grace %d ends at %s, after the deadline", start.Sub(notice), g, end.Sub(notice))
		}
	})
}

func TestConfigValidate(t *testing.T) {
	valid := Config{NodeName: "n"}.WithDefaults()
	if err := valid.Validate(); err != nil {
		t.Fatalf("defaults are invalid: %v", err)
	}
	cases := []struct {
		name   string
		change func(*Config)
	}{
		{"an empty node name is refused", func(c *Config) { c.NodeName = "" }},
		{"an unknown taint effect is refused", func(c *Config) { c.TaintEffect = "Sometimes" }},
		{"escalating system pods before their wave starts is refused", func(c *Config) { c.SystemEscalateBefore = c.SystemGrace + time.Second }},
		{"a backoff cap below its base is refused", func(c *Config) { c.BackoffCap = c.BackoffBase / 2 }},
		{"a delete grace under one second is refused", func(c *Config) { c.MinDeleteGrace = 500 * time.Millisecond }},
		{"zero concurrency after defaults is refused", func(c *Config) { c.Concurrency = 0 }},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c := valid
			tc.change(&c)
			if c.Validate() == nil {
				t.Error("accepted")
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

func deref(p *int64) any {
	if p == nil {
		return "nil"
	}
	return *p
}

// BenchmarkClassify measures one pass over a busy node: the drain repeats it
// on every pod change, so it must stay far below a millisecond.
func BenchmarkClassify(b *testing.B) {
	var pods []*corev1.Pod
	for i := range 110 {
		opts := []func(*corev1.Pod){}
		switch i % 5 {
		case 0:
			opts = append(opts, inNamespace("kube-system"))
		case 1:
			opts = append(opts, tolerating(10))
		}
		pods = append(pods, pod("p", opts...))
	}
	s := newSchedule(testMark, Config{}.WithDefaults())
	for b.Loop() {
		classify(pods, notice, s, corev1.TaintEffectNoSchedule)
	}
}

// After SIGTERM the agent has until exitAt: cut-offs later than exitAt minus
// their margins move before it; the VM's deadline, which clamps grace
// periods, stays.
func TestScheduleWithinTheAgentsGrace(t *testing.T) {
	cfg := Config{SystemGrace: 10 * time.Second, SystemEscalateBefore: 5 * time.Second}
	notice := time.Unix(1000, 0)
	s := newSchedule(nodemark.Mark{NoticeTime: notice, Deadline: notice.Add(30 * time.Second)}, cfg)
	if got := s.within(time.Time{}, cfg); got != s {
		t.Fatalf("no signal changed the schedule: %+v", got)
	}
	if got := s.within(notice.Add(40*time.Second), cfg); got != s {
		t.Fatalf("a grace beyond the deadline changed the schedule: %+v", got)
	}
	short := s.within(notice.Add(12*time.Second), cfg)
	if !short.regularCutoff.Equal(notice.Add(2*time.Second)) || !short.systemCutoff.Equal(notice.Add(7*time.Second)) || !short.deadline.Equal(s.deadline) {
		t.Fatalf("exit at +12s: got cut-offs %s/%s deadline %s", short.regularCutoff.Sub(notice), short.systemCutoff.Sub(notice), short.deadline.Sub(notice))
	}
	if again := short.within(notice.Add(20*time.Second), cfg); again != short {
		t.Fatal("a later exit moved cut-offs back")
	}
}
