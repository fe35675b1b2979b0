package certmanager

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

func certificate(conds ...cmapi.CertificateCondition) *cmapi.Certificate {
	return &cmapi.Certificate{
		ObjectMeta: metav1.ObjectMeta{Name: "serving", Namespace: "termgate", Generation: 2},
		Status:     cmapi.CertificateStatus{Conditions: conds},
	}
}

func TestReadiness(t *testing.T) {
	tests := map[string]struct {
		cert *cmapi.Certificate
		want string
	}{
		"A Ready certificate is ready.": {
			cert: certificate(cmapi.CertificateCondition{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue, ObservedGeneration: 2}),
		},
		"A certificate that is not Ready says why.": {
			cert: certificate(cmapi.CertificateCondition{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionFalse, Reason: "DoesNotExist", Message: "Issuing certificate as Secret does not exist"}),
			want: "DoesNotExist: Issuing certificate as Secret does not exist",
		},
		"A certificate without conditions is not ready yet.": {cert: certificate(), want: "no Ready condition"},
		"A Ready condition about an older spec does not count.": {
			cert: certificate(cmapi.CertificateCondition{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue, ObservedGeneration: 1}),
			want: "generation 1",
		},
		"A missing certificate is not ready.": {want: "not found"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			b := fake.NewClientBuilder().WithScheme(testScheme(t))
			if tc.cert != nil {
				b = b.WithObjects(tc.cert)
			}
			s := New(b.Build(), key, time.Minute, clocktesting.NewFakeClock(time.Now()))
			runStatus(t, s)
			waitFor(t, s, tc.want)
		})
	}
}

var key = types.NamespacedName{Namespace: "termgate", Name: "serving"}

func testScheme(t *testing.T) *runtime.Scheme {
	t.Helper()
	scheme := runtime.NewScheme()
	if err := cmapi.AddToScheme(scheme); err != nil {
		t.Fatal(err)
	}
	return scheme
}

// runStatus runs s until the test ends.
func runStatus(t *testing.T, s *Status) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
}

// waitFor waits until Ready says want ("" for ready). The fake client
// delivers a change at once; the bound only keeps a broken test from
// hanging, and the test's fake clock never moves, so no retry helps.
func waitFor(t *testing.T, s *Status, want string) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for {
		err := s.Ready()
		if (want == "" && err == nil) || (want != "" && err != nil && strings.Contains(err.Error(), want)) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("readiness %v, want %q", err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// signalledWatch tells when the first watch is open: the fake client,
// unlike the API server, does not replay the current state to a new watch.
type signalledWatch struct {
	client.WithWatch
	once     sync.Once
	watching chan struct{}
}

func (c *signalledWatch) Watch(ctx context.Context, list client.ObjectList, opts ...client.ListOption) (watch.Interface, error) {
	w, err := c.WithWatch.Watch(ctx, list, opts...)
	c.once.Do(func() { close(c.watching) })
	return w, err
}

func watched(c client.WithWatch) *signalledWatch {
	return &signalledWatch{WithWatch: c, watching: make(chan struct{})}
}

func TestFollowsTheCertificateWithoutWaitingForARetry(t *testing.T) {
	c := watched(fake.NewClientBuilder().WithScheme(testScheme(t)).WithObjects(certificate()).WithStatusSubresource(&cmapi.Certificate{}).Build())
	s := New(c, key, time.Hour, clocktesting.NewFakeClock(time.Now()))
	runStatus(t, s)
	waitFor(t, s, "no Ready condition")
	<-c.watching

	var cert cmapi.Certificate
	if err := c.Get(context.Background(), key, &cert); err != nil {
		t.Fatal(err)
	}
	cert.Status.Conditions = []cmapi.CertificateCondition{{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue, ObservedGeneration: 2}}
	if err := c.Status().Update(context.Background(), &cert); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "")

	if err := c.Delete(context.Background(), &cert); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "was deleted")
}

func TestAMissingCertificateIsFollowedUntilCertManagerCreatesIt(t *testing.T) {
	c := watched(fake.NewClientBuilder().WithScheme(testScheme(t)).Build())
	s := New(c, key, time.Hour, clocktesting.NewFakeClock(time.Now()))
	runStatus(t, s)
	waitFor(t, s, "not found")
	<-c.watching
	cert := certificate(cmapi.CertificateCondition{Type: cmapi.CertificateConditionReady, Status: cmmeta.ConditionTrue, ObservedGeneration: 2})
	if err := c.Create(context.Background(), cert); err != nil {
		t.Fatal(err)
	}
	waitFor(t, s, "")
}
