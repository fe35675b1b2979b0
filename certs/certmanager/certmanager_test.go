package certmanager

import (
	"context"
	"strings"
	"testing"
	"time"

	cmapi "github.com/cert-manager/cert-manager/pkg/apis/certmanager/v1"
	cmmeta "github.com/cert-manager/cert-manager/pkg/apis/meta/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	clocktesting "k8s.io/utils/clock/testing"
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
			scheme := runtime.NewScheme()
			if err := cmapi.AddToScheme(scheme); err != nil {
				t.Fatal(err)
			}
			b := fake.NewClientBuilder().WithScheme(scheme)
			if tc.cert != nil {
				b = b.WithObjects(tc.cert)
			}
			s := New(b.Build(), types.NamespacedName{Namespace: "termgate", Name: "serving"}, time.Minute, clocktesting.NewFakeClock(time.Now()))
			s.set(s.check(context.Background()))
			err := s.Ready()
			if tc.want == "" && err != nil {
				t.Fatalf("not ready: %v", err)
			}
			if tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want error containing %q", err, tc.want)
			}
		})
	}
}
