package cluster

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// RunsTermRecord makes a pod (or a pod template) run the termrecord image
// on the real node: it tolerates the node's own taint, and its container
// writes when it started, when SIGTERM arrived and when it exited into
// recordDir/<pod name> (a hostPath), exiting exitDelay after SIGTERM. It
// fits kit.Pod and kit.Deployment as an option. Where the pod runs is the
// caller's: a node selector, or the kwok nodes cordoned.
func RunsTermRecord(recordDir string, exitDelay time.Duration, grace int64) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		hostPathDir := corev1.HostPathDirectory
		p.Spec.Tolerations = append(p.Spec.Tolerations, corev1.Toleration{Key: RealNodeTaint, Operator: corev1.TolerationOpExists})
		p.Spec.TerminationGracePeriodSeconds = &grace
		p.Spec.Containers = []corev1.Container{{
			Name:            "work",
			Image:           TermRecordImage,
			ImagePullPolicy: corev1.PullNever,
			Env: []corev1.EnvVar{
				{Name: "EXIT_DELAY", Value: exitDelay.String()},
				{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}},
			},
			VolumeMounts: []corev1.VolumeMount{{Name: "record", MountPath: "/record"}},
		}}
		p.Spec.Volumes = []corev1.Volume{{Name: "record", VolumeSource: corev1.VolumeSource{
			HostPath: &corev1.HostPathVolumeSource{Path: recordDir, Type: &hostPathDir},
		}}}
	}
}

// TermRecord is what a termrecord container wrote about itself.
type TermRecord struct {
	Started, SIGTERM, Exit time.Time
}

// ReadTermRecord parses recordDir/<pod>: lines "started|sigterm|exit
// <RFC 3339 time>".
func ReadTermRecord(recordDir, pod string) (TermRecord, error) {
	var r TermRecord
	b, err := os.ReadFile(filepath.Join(recordDir, pod))
	if err != nil {
		return r, fmt.Errorf("termrecord of %s: %w", pod, err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		kind, at, _ := strings.Cut(line, " ")
		ts, err := time.Parse(time.RFC3339Nano, at)
		if err != nil {
			return r, fmt.Errorf("termrecord of %s: line %q: %w", pod, line, err)
		}
		switch kind {
		case "started":
			r.Started = ts
		case "sigterm":
			r.SIGTERM = ts
		case "exit":
			r.Exit = ts
		}
	}
	return r, nil
}

// ServesHTTP makes a termrecord pod (RunsTermRecord, applied first) answer
// HTTP on port with its own name, until it exits: a backend behind a load
// balancer that finishes its work for the exit delay after SIGTERM.
func ServesHTTP(port int32) func(*corev1.Pod) {
	return func(p *corev1.Pod) {
		c := &p.Spec.Containers[0]
		c.Env = append(c.Env, corev1.EnvVar{Name: "LISTEN", Value: fmt.Sprintf(":%d", port)})
		c.Ports = append(c.Ports, corev1.ContainerPort{Name: "http", ContainerPort: port})
	}
}
