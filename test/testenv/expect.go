package testenv

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
)

// ExpectPodsRunning waits until n pods matching selector in ns are Running
// and bound to a node, and returns them.
func ExpectPodsRunning(t testing.TB, client kubernetes.Interface, ns string, selector map[string]string, n int, budget time.Duration) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	Eventually(t, budget, fmt.Sprintf("%d running pods %v in %s", n, selector, ns), func(ctx context.Context) (bool, string, error) {
		list, err := client.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: labels.SelectorFromSet(selector).String()})
		if err != nil {
			return false, "", err
		}
		pods = pods[:0]
		for _, p := range list.Items {
			if p.Status.Phase == corev1.PodRunning && p.Spec.NodeName != "" && p.DeletionTimestamp == nil {
				pods = append(pods, p)
			}
		}
		return len(pods) == n, fmt.Sprintf("%d of %d running (%d pods listed)", len(pods), n, len(list.Items)), nil
	})
	return pods
}

// ExpectPodGone waits until the pod with this UID no longer exists.
func ExpectPodGone(t testing.TB, client kubernetes.Interface, pod *corev1.Pod, budget time.Duration) {
	t.Helper()
	Eventually(t, budget, "pod "+pod.Namespace+"/"+pod.Name+" gone", func(ctx context.Context) (bool, string, error) {
		p, err := client.CoreV1().Pods(pod.Namespace).Get(ctx, pod.Name, metav1.GetOptions{})
		if err != nil {
			return apierrors.IsNotFound(err), err.Error(), nil
		}
		return p.UID != pod.UID, "still there, phase " + string(p.Status.Phase), nil
	})
}
