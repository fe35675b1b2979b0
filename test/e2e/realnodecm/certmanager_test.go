package realnodecm_test

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/dynamic"

	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/realnodeinstall"
	"termgate.dev/termgate/test/testenv"
)

// The names the shipped cert-manager overlay gives its objects.
const (
	servingCertificate = "termgate-webhook-serving"
	servingSecret      = "termgate-webhook-serving-tls"
	webhookConfig      = "termgate"
	webhookService     = "termgate-webhook"
)

// installBudget bounds the install: cert-manager issues the CA and the
// serving certificate in seconds, but the kubelet retries mounting the
// not-yet-written Secret with a doubling back-off (0.5 s, 1 s, 2 s, ... 32 s),
// and after the mount the webhook waits for its Certificate Ready and its
// caches. Two minutes leaves the back-off two more steps.
const installBudget = 2 * time.Minute

// A user installing the cert-manager overlay relies on: cert-manager
// issuing the serving certificate into the Secret the Deployment mounts,
// the CA injector filling both webhook configurations, the webhook's pods
// turning Ready on a real kubelet with that Secret mounted and serving its
// certificate, and the API server, trusting the injected CA, having the
// webhook refuse a pod pinned onto a terminating node.
func TestCertManagerOnTheRealNodeIssuesMountsInjectsAndRefusesAPinnedPod(t *testing.T) {
	needRealNode(t)
	ctx := context.Background()
	dyn, err := dynamic.NewForConfig(shared.Config)
	if err != nil {
		t.Fatalf("dynamic client: %v", err)
	}

	applied := time.Now()
	if err := realnodeinstall.Apply(ctx, shared, overlay); err != nil {
		t.Fatal(err)
	}
	var certReady, injected, podsReady time.Duration
	err = kit.Poll(ctx, installBudget, func(ctx context.Context) (bool, string, error) {
		since := time.Since(applied)
		if certReady == 0 {
			if ok, _, err := localrun.CertificateReady(ctx, dyn, realnodeinstall.WebhookNamespace, servingCertificate); err == nil && ok {
				certReady = since
			}
		}
		if injected == 0 {
			if _, err := localrun.InjectedBundle(ctx, shared.Client, webhookConfig); err == nil {
				injected = since
			}
		}
		ready := webhookPodsReadyOnTheRealNode(ctx)
		if podsReady == 0 && ready > 0 && realnodeinstall.WebhookAvailable(ctx, shared.Client) {
			podsReady = since
		}
		agent := realnodeinstall.AgentPodReady(ctx, shared.Client, node.Name) != nil
		return certReady > 0 && injected > 0 && podsReady > 0 && agent,
			fmt.Sprintf("Certificate Ready after %s, bundle injected after %s, %d webhook pods Ready on %s (Available after %s), agent Ready %v",
				certReady, injected, ready, node.Name, podsReady, agent), nil
	})
	if err != nil {
		realnodeinstall.Diagnose(ctx, shared, node, "realnodecm")
		t.Fatalf("cert-manager overlay not installed on the real node within %s (cert-manager log %s): %v",
			installBudget, shared.LogPath("cert-manager"), err)
	}
	t.Logf("overlay applied -> serving Certificate Ready %s, CA bundle injected %s, webhook pods Ready on the real node %s",
		certReady.Round(time.Millisecond), injected.Round(time.Millisecond), podsReady.Round(time.Millisecond))

	// Every webhook pod runs on the real node and mounts the Secret the
	// Certificate writes.
	pods, err := shared.Client.CoreV1().Pods(realnodeinstall.WebhookNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=termgate-webhook"})
	if err != nil || len(pods.Items) == 0 {
		t.Fatalf("list webhook pods: %d, %v", len(pods.Items), err)
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName != node.Name {
			t.Errorf("webhook pod %s runs on %q, not the real node", p.Name, p.Spec.NodeName)
		}
		if !mountsSecret(&p, servingSecret) {
			t.Errorf("webhook pod %s does not mount Secret %s", p.Name, servingSecret)
		}
	}

	// The bundle is the CA that signed what cert-manager wrote, and every
	// endpoint of the Service (where the API server sends its calls) serves
	// that certificate, verified as the API server verifies it.
	secret, err := shared.Client.CoreV1().Secrets(realnodeinstall.WebhookNamespace).Get(ctx, servingSecret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read Secret %s: %v", servingSecret, err)
	}
	// InjectedBundle fails unless every webhook of both configurations
	// carries the same bundle.
	bundle, err := localrun.InjectedBundle(ctx, shared.Client, webhookConfig)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bundle, secret.Data["ca.crt"]) {
		t.Errorf("the injected caBundle is not the ca.crt of Secret %s", servingSecret)
	}
	issued, err := kit.ParseLeafPEM(secret.Data[corev1.TLSCertKey])
	if err != nil {
		t.Fatalf("Secret %s: %v", servingSecret, err)
	}
	endpoints := serviceEndpoints(t, ctx)
	if len(endpoints) != len(pods.Items) {
		t.Errorf("Service %s has %d ready endpoints %v, want one per webhook pod (%d)", webhookService, len(endpoints), endpoints, len(pods.Items))
	}
	for _, addr := range endpoints {
		served, err := localrun.ServedCertificate(ctx, addr, webhookService+"."+realnodeinstall.WebhookNamespace+".svc", bundle)
		if err != nil {
			t.Errorf("endpoint %s: %v", addr, err)
			continue
		}
		if !served.Equal(issued) {
			t.Errorf("endpoint %s serves serial %s, cert-manager issued %s", addr, served.SerialNumber, issued.SerialNumber)
		}
	}

	// A pod pinned onto a terminating node skips the scheduler; only the
	// webhook, called by the API server through the Service's endpoint and
	// trusted through the injected bundle, can refuse it. Were the call to
	// fail (TLS, routing), the policy fails open and the pod would land.
	ns := testenv.Namespace(t, shared.Client)
	kwokNode := testenv.OtherNode(t, shared.Client, node.Name)
	testenv.MarkByHand(t, shared.Client, kwokNode)
	// The webhook's node cache is an informer: the mark reaches it well
	// within 10 s.
	testenv.Eventually(t, 10*time.Second, "a pinned pod onto the marked node "+kwokNode+" refused", func(ctx context.Context) (bool, string, error) {
		p := kit.Pod(ns, "pinned-"+strconv.FormatInt(time.Now().UnixNano(), 36), kit.OnNode(kwokNode))
		_, err := shared.Client.CoreV1().Pods(ns).Create(ctx, p, metav1.CreateOptions{})
		if err == nil {
			_ = shared.Client.CoreV1().Pods(ns).Delete(ctx, p.Name, metav1.DeleteOptions{})
			return false, "admitted", nil
		}
		msg := err.Error()
		return strings.Contains(msg, "pinned-pod.termgate.dev") && strings.Contains(msg, "is terminating"), msg, nil
	})
}

// webhookPodsReadyOnTheRealNode counts the webhook's Ready pods on the
// real node.
func webhookPodsReadyOnTheRealNode(ctx context.Context) int {
	pods, err := shared.Client.CoreV1().Pods(realnodeinstall.WebhookNamespace).List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=termgate-webhook"})
	if err != nil {
		return 0
	}
	n := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Spec.NodeName == node.Name && p.DeletionTimestamp == nil && realnodeinstall.PodReady(p) {
			n++
		}
	}
	return n
}

func mountsSecret(p *corev1.Pod, secret string) bool {
	for _, v := range p.Spec.Volumes {
		if v.Secret == nil || v.Secret.SecretName != secret {
			continue
		}
		for _, c := range p.Spec.Containers {
			for _, m := range c.VolumeMounts {
				if m.Name == v.Name {
					return true
				}
			}
		}
	}
	return false
}

// serviceEndpoints returns the ready host:port addresses of the webhook
// Service's https port: where the API server (with aggregator routing, no
// kube-proxy) sends each admission call.
func serviceEndpoints(t *testing.T, ctx context.Context) []string {
	t.Helper()
	slices, err := shared.Client.DiscoveryV1().EndpointSlices(realnodeinstall.WebhookNamespace).List(ctx, metav1.ListOptions{
		LabelSelector: discoveryv1.LabelServiceName + "=" + webhookService,
	})
	if err != nil {
		t.Fatalf("list EndpointSlices of %s: %v", webhookService, err)
	}
	var out []string
	for _, s := range slices.Items {
		var port int32
		for _, p := range s.Ports {
			if p.Name != nil && *p.Name == "https" && p.Port != nil {
				port = *p.Port
			}
		}
		if port == 0 {
			continue
		}
		for _, e := range s.Endpoints {
			if e.Conditions.Ready == nil || !*e.Conditions.Ready {
				continue
			}
			for _, a := range e.Addresses {
				out = append(out, net.JoinHostPort(a, strconv.Itoa(int(port))))
			}
		}
	}
	return out
}
