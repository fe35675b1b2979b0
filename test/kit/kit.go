// Package kit holds what termgate's tests, demo and benchmarks share:
// object builders with defaults, namespaces, and polling with a deadline
// that says what it last saw. It does not import the testing package, so
// the demo and benchmark binaries can use it; test/testenv has the helpers
// that need a *testing.T.
package kit

import (
	"context"
	"fmt"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// PollInterval is how often Expect helpers re-read the API.
const PollInterval = 25 * time.Millisecond

// EnsureNamespace creates namespace ns unless it exists, and waits until
// pods can be created in it.
func EnsureNamespace(ctx context.Context, client kubernetes.Interface, ns string) error {
	_, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("create namespace %s: %w", ns, err)
	}
	return WaitDefaultServiceAccount(ctx, client, ns)
}

// WaitDefaultServiceAccount waits for the namespace's default ServiceAccount:
// the ServiceAccount admission plugin refuses pods until the controller-manager
// has made it, usually within a second.
func WaitDefaultServiceAccount(ctx context.Context, client kubernetes.Interface, ns string) error {
	err := Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, string, error) {
		_, err := client.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return false, "not created yet", nil
		}
		return err == nil, "", err
	})
	if err != nil {
		return fmt.Errorf("default ServiceAccount in %s: %w", ns, err)
	}
	return nil
}

// Condition reports whether the expectation holds, and if not, what it saw.
type Condition func(ctx context.Context) (ok bool, seen string, err error)

// Poll polls cond until it holds or budget runs out, and says what it
// last saw; testenv.Eventually is the same for tests.
func Poll(ctx context.Context, budget time.Duration, cond Condition) error {
	var seen string
	err := wait.PollUntilContextTimeout(ctx, PollInterval, budget, true, func(ctx context.Context) (bool, error) {
		ok, s, err := cond(ctx)
		seen = s
		return ok, err
	})
	if err != nil && seen != "" {
		return fmt.Errorf("%w; last seen: %s", err, seen)
	}
	return err
}
