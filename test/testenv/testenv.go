// Package testenv is what termgate's tests share that needs the testing
// package: one local cluster per test package (RunWithCluster), a namespace
// per test, and expectations that poll the API with a deadline derived from
// the system under test and fail the test with what they last saw. Only
// tests import it.
package testenv

import (
	"context"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/test/kit"
)

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
	if err := kit.WaitDefaultServiceAccount(ctx, client, ns.Name); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

// Eventually polls cond until it holds or budget runs out. The budget must
// come from the system under test (a deadline, a grace period), never from a
// guess about how fast the machine is.
func Eventually(t testing.TB, budget time.Duration, what string, cond kit.Condition) {
	t.Helper()
	if err := kit.Poll(context.Background(), budget, cond); err != nil {
		t.Fatalf("expected %s within %s: %v", what, budget, err)
	}
}
