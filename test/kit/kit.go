// Package kit holds the test helpers every termgate integration test uses:
// object builders with defaults and generated names, and Expect helpers that
// poll the API with a deadline and fail the test with what they last saw.
package kit

import (
	"context"
	"fmt"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
)

// PollInterval is how often Expect helpers re-read the API.
const PollInterval = 25 * time.Millisecond

// Namespace creates a namespace with a generated name, waits for its default
// ServiceAccount (pods cannot be created before the controller-manager makes
// it) and deletes the namespace when the test ends.
func Namespace(t testing.TB, client kubernetes.Interface) string {
	t.Helper()
	ctx := context.Background()
	ns, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "tg-"},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace: %v", err)
	}
	t.Cleanup(func() {
		_ = client.CoreV1().Namespaces().Delete(context.Background(), ns.Name, metav1.DeleteOptions{})
	})
	if err := WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

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

// Eventually polls cond until it holds or budget runs out. The budget must
// come from the system under test (a deadline, a grace period), never from a
// guess about how fast the machine is.
func Eventually(t testing.TB, budget time.Duration, what string, cond Condition) {
	t.Helper()
	if err := Poll(context.Background(), budget, cond); err != nil {
		t.Fatalf("expected %s within %s: %v", what, budget, err)
	}
}

// Poll is Eventually for code that is not a test (the demo, benchmarks).
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
