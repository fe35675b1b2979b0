// Package certmanager_test proves the cert-manager overlay end to end: the
// real cert-manager (bin/cert-manager, built from cert-manager's own
// packages) issues the overlay's CA and serving certificate, its CA injector
// fills termgate's webhook configurations, and termgate's webhook in
// --cert-mode=cert-manager serves that certificate to the API server,
// through a serving-certificate rotation and a CA rotation.
//
// The webhook runs as a process on loopback with the Secret mirrored into
// its certificate directory the way the kubelet mounts it; the overlay's
// serving Certificate gets 127.0.0.1 added, as a user's overlay would for a
// webhook reached at an address (see localrun.StartCertManagerWebhook).
package certmanager_test

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"termgate.dev/termgate/nodemark"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/kit"
	"termgate.dev/termgate/test/localrun"
	"termgate.dev/termgate/test/testenv"
)

var (
	shared *cluster.Cluster
	binary string

	startOnce sync.Once
	webhook   *localrun.CertManagerWebhook
	startErr  error
)

// markedNode is marked terminating for the whole package: the admission
// stream and the bind test aim at it.
const markedNode = "spot-0"

func TestMain(m *testing.M) {
	opts := cluster.Options{Nodes: cluster.DefaultNodes(2), CertManager: true}
	// Under -short every test runs and skips through testenv.NeedCluster.
	code := testenv.RunUnitsAndCluster(m, opts, &shared, func(dir string) error {
		var err error
		binary, err = localrun.Build(context.Background(), dir)
		return err
	})
	if webhook != nil {
		webhook.Stop()
	}
	os.Exit(code)
}

// started starts the webhook with the overlay's certificates once for the
// package; every test uses it in turn (they share the fixed names of the
// shipped overlay, so none runs in parallel).
func started(t *testing.T) *localrun.CertManagerWebhook {
	t.Helper()
	testenv.NeedCluster(t, shared)
	startOnce.Do(func() {
		webhook, startErr = localrun.StartCertManagerWebhook(context.Background(), localrun.CertManagerWebhookSpec{
			Binary: binary, Cluster: shared,
		})
		if startErr == nil {
			startErr = markTerminating(context.Background(), markedNode)
		}
	})
	if startErr != nil {
		t.Fatalf("start the webhook with cert-manager certificates: %v (cert-manager log: %s)", startErr, shared.LogPath("cert-manager"))
	}
	return webhook
}

// markTerminating marks a node as the agent does when its VM is preempted.
func markTerminating(ctx context.Context, name string) error {
	node, err := shared.Client.CoreV1().Nodes().Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("mark %s: %w", name, err)
	}
	now := time.Now()
	mark := nodemark.Mark{
		State: nodemark.StateTerminating, Reason: nodemark.ReasonPreempted,
		NoticeTime: now, Deadline: now.Add(time.Hour), BootID: node.Status.NodeInfo.BootID,
	}
	// A merge patch: kwok writes the node's status meanwhile, and an
	// update would race it.
	patch, err := json.Marshal(map[string]any{
		"metadata": map[string]any{"annotations": mark.Annotations()},
		"spec":     map[string]any{"taints": append(node.Spec.Taints, nodemark.Taint(corev1.TaintEffectNoSchedule))},
	})
	if err != nil {
		return fmt.Errorf("mark %s: %w", name, err)
	}
	if _, err := shared.Client.CoreV1().Nodes().Patch(ctx, name, types.MergePatchType, patch, metav1.PatchOptions{}); err != nil {
		return fmt.Errorf("mark %s: %w", name, err)
	}
	return nil
}

// A user applying the overlay relies on: cert-manager issuing the chain,
// the CA injector filling both configurations, and the webhook serving the
// issued certificate and turning Ready only once the Certificate is Ready.
func TestCertManagerIssuesInjectsAndServesTheOverlayCertificate(t *testing.T) {
	w := started(t)
	ctx := context.Background()
	t.Logf("overlay applied -> serving Certificate Ready %s, CA bundle injected %s, webhook Ready with the certificate verified %s",
		w.CertificateReadyAt.Sub(w.AppliedAt).Round(time.Millisecond), w.InjectedAt.Sub(w.AppliedAt).Round(time.Millisecond),
		w.ReadyAt.Sub(w.AppliedAt).Round(time.Millisecond))
	if w.NotReadyBeforeApply == "" {
		t.Error("/readyz answered 200 before any certificate existed")
	} else {
		t.Logf("before the overlay's certificates existed /readyz said: %s", oneLine(w.NotReadyBeforeApply))
	}
	if w.ReadyBeforeCertificate {
		t.Error("/readyz answered 200 while the serving Certificate was not Ready")
	}

	leaf, err := w.ServedCertificate(ctx)
	if err != nil {
		t.Fatalf("served certificate: %v", err)
	}
	secret, err := shared.Client.CoreV1().Secrets(w.Namespace).Get(ctx, w.Secret, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("read Secret %s: %v", w.Secret, err)
	}
	issued := parseLeaf(t, secret.Data[corev1.TLSCertKey])
	if !leaf.Equal(issued) {
		t.Errorf("webhook serves serial %s, cert-manager issued %s", leaf.SerialNumber, issued.SerialNumber)
	}
	svc := "termgate-webhook." + w.Namespace + ".svc"
	if !slices.Contains(leaf.DNSNames, svc) || len(leaf.IPAddresses) != 1 || leaf.IPAddresses[0].String() != "127.0.0.1" {
		t.Errorf("served certificate names %v %v, want the Service %s and 127.0.0.1", leaf.DNSNames, leaf.IPAddresses, svc)
	}
	caSecret, err := caSecretOf(ctx, w)
	if err != nil {
		t.Fatal(err)
	}
	bundle, err := w.InjectedBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bundle, secret.Data["ca.crt"]) || !bytes.Equal(bytes.TrimSpace(bundle), bytes.TrimSpace(caSecret.Data[corev1.TLSCertKey])) {
		t.Errorf("injected bundle is not the CA Certificate %s that signed the serving certificate", w.CACertificate)
	}
	if ca := parseLeaf(t, bundle); !ca.IsCA || leaf.CheckSignatureFrom(ca) != nil {
		t.Errorf("served certificate (issuer %s) is not signed by the injected CA %s", leaf.Issuer, ca.Subject)
	}
}

// The bind gate keeps pods off a terminating node through the API server,
// with the API server trusting the webhook through the injected CA.
func TestCertManagerWebhookRefusesABindOntoAMarkedNode(t *testing.T) {
	started(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	// Wait until the webhook's node cache holds the mark: a pinned pod's
	// dry-run is refused by the same cache the bind gate reads. The cache is
	// an informer; 10 s is far beyond its watch latency.
	testenv.Eventually(t, 10*time.Second, "the webhook to see the mark on "+markedNode, func(ctx context.Context) (bool, string, error) {
		failed := checkRefused(ctx, ns, markedNode)
		return failed == "", failed, nil
	})
	// No scheduler serves this name, so only the test binds the pod.
	pod := kit.Pod(ns, "bind-me")
	pod.Spec.SchedulerName = "termgate-test-nobody"
	if _, err := shared.Client.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	bind := func(node string) error {
		return shared.Client.CoreV1().Pods(ns).Bind(ctx, &corev1.Binding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: pod.Name},
			Target:     corev1.ObjectReference{Kind: "Node", Name: node},
		}, metav1.CreateOptions{})
	}
	err := bind(markedNode)
	if err == nil || !strings.Contains(err.Error(), "is terminating") {
		t.Fatalf("bind onto marked node %s: got %v, want termgate's refusal", markedNode, err)
	}
	t.Logf("bind onto %s refused: %v", markedNode, err)
	if err := bind("ondemand-1"); err != nil {
		t.Fatalf("bind onto the unmarked node ondemand-1: %v", err)
	}
}

// Renewing the serving certificate under a steady stream of admission
// calls: the webhook serves the new pair without a restart and no call
// fails. The CA does not change, so the bundle stays as it is.
func TestCertManagerServingCertificateRotationDropsNoAdmissionCall(t *testing.T) {
	w := started(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	before, err := w.ServedCertificate(ctx)
	if err != nil {
		t.Fatal(err)
	}
	bundleBefore, err := w.InjectedBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := w.PID()
	failOpenBefore := failOpenCount(t)

	s := startStream(ns, markedNode)
	s.warmUp(t)
	began := time.Now()
	rev, err := w.Renew(ctx, w.Certificate)
	if err != nil {
		s.stop()
		t.Fatal(err)
	}
	// cert-manager re-issues within seconds; 30 s bounds a stuck issuer.
	err = kit.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, string, error) {
		leaf, err := w.ServedCertificate(ctx)
		if err != nil {
			return false, err.Error(), nil
		}
		return leaf.SerialNumber.Cmp(before.SerialNumber) != 0, "still serving serial " + leaf.SerialNumber.String(), nil
	})
	moved := time.Since(began)
	if err == nil {
		err = w.WaitRenewed(ctx, w.Certificate, rev, 30*time.Second)
	}
	// Keep calling after the switch: a webhook that dropped its listener or
	// a stale connection would show here.
	s.callsAfter(t, time.Now(), 200)
	res := s.stop()
	if err != nil {
		t.Fatalf("serving certificate not rotated: %v", err)
	}
	t.Logf("serving rotation: new certificate served %s after the renewal was requested; %d admission calls during the rotation, %d failed, %d fail-open in the API server",
		moved.Round(time.Millisecond), res.calls, res.failed, failOpenCount(t)-failOpenBefore)
	res.expect(t, 200)
	if fo := failOpenCount(t) - failOpenBefore; fo != 0 {
		t.Errorf("the API server failed open %d times on termgate's webhooks during the rotation", fo)
	}
	if w.PID() != pid || w.Exited() != nil {
		t.Errorf("webhook restarted or exited during the rotation (pid %d -> %d, %v)", pid, w.PID(), w.Exited())
	}
	if bundleAfter, err := w.InjectedBundle(ctx); err != nil || !bytes.Equal(bundleAfter, bundleBefore) {
		t.Errorf("CA bundle changed on a serving-certificate renewal (err %v): the chain keeps the CA", err)
	}
}

// Replacing the CA: the CA Certificate is renewed (new key), then the
// serving Certificate is re-issued by it; the CA injector moves the bundle
// to the new CA and the webhook serves the new leaf. Calls made while the
// two sides move may fail (the bundle holds one CA); once both have moved
// every call succeeds.
func TestCertManagerCARotationReinjectsAndCallsSucceedOnceBothSidesMoved(t *testing.T) {
	w := started(t)
	ctx := context.Background()
	ns := testenv.Namespace(t, shared.Client)
	bundleBefore, err := w.InjectedBundle(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pid := w.PID()
	s := startStream(ns, markedNode)
	s.warmUp(t)
	failOpenBefore := failOpenCount(t)
	began := time.Now()
	rev, err := w.Renew(ctx, w.CACertificate)
	if err == nil {
		err = w.WaitRenewed(ctx, w.CACertificate, rev, 30*time.Second)
	}
	if err != nil {
		s.stop()
		t.Fatalf("CA not renewed: %v", err)
	}
	caRenewed := time.Since(began)
	if rev, err = w.Renew(ctx, w.Certificate); err != nil {
		s.stop()
		t.Fatal(err)
	}
	caSecret, err := caSecretOf(ctx, w)
	if err != nil {
		s.stop()
		t.Fatal(err)
	}
	newCA := bytes.TrimSpace(caSecret.Data[corev1.TLSCertKey])
	t.Logf("CA %s replaced by %s", serials(bundleBefore), serials(newCA))
	if bytes.Equal(newCA, bytes.TrimSpace(bundleBefore)) {
		s.stop()
		t.Fatal("CA Secret still holds the old CA after its Certificate was renewed")
	}
	// Both sides moved: the bundle trusts the new CA and the webhook serves
	// a leaf the new CA signed. Re-issue plus injection takes seconds.
	newCACert := parseLeaf(t, newCA)
	var seen string
	err = kit.Poll(ctx, 30*time.Second, func(ctx context.Context) (bool, string, error) {
		bundle, err := w.InjectedBundle(ctx)
		switch {
		case ctx.Err() != nil:
			return false, seen, nil // keep what was seen before the deadline
		case err != nil:
			seen = err.Error()
		case !bytes.Contains(bundle, newCA):
			seen = "bundle " + serials(bundle) + " lacks the new CA"
		default:
			leaf, err := w.ServedCertificate(ctx)
			if err == nil && leaf.CheckSignatureFrom(newCACert) == nil {
				return true, "", nil
			}
			seen = fmt.Sprintf("served leaf not signed by the new CA (%v)", err)
		}
		return false, seen, nil
	})
	bothMoved := time.Now()
	if err != nil {
		s.stop()
		t.Fatalf("bundle and served certificate did not both move to the new CA: %v\n%s", err, certManagerState(w))
	}
	// Calls after both moved must all succeed.
	s.callsAfter(t, bothMoved, 200)
	res := s.stop()
	during, after := res.split(bothMoved)
	t.Logf("CA rotation: CA renewed %s after the request, bundle and served leaf on the new CA %s after it; "+
		"%d calls before both sides moved (%d failed), %d calls after (%d failed)",
		caRenewed.Round(time.Millisecond), bothMoved.Sub(began).Round(time.Millisecond),
		during.calls, during.failed, after.calls, after.failed)
	for _, f := range during.failures {
		t.Logf("  while moving: %s", f)
	}
	after.expect(t, 200)
	t.Logf("the API server failed open %d times on termgate's webhooks during the CA rotation", failOpenCount(t)-failOpenBefore)
	// cert-manager's CA injector merges (CAInjectorMerging, GA in v1.21):
	// it appends the new CA and keeps the old one until it expires, so
	// leaves of either CA verify while replicas and the kubelet catch up.
	if bundle, err := w.InjectedBundle(ctx); err != nil || !bytes.Contains(bundle, bytes.TrimSpace(bundleBefore)) {
		t.Errorf("bundle %s after the CA rotation no longer trusts the old CA %s (err %v)", serials(bundle), serials(bundleBefore), err)
	} else {
		t.Logf("bundle after the CA rotation: %s (old CA kept beside the new one)", serials(bundle))
	}
	if err := w.WaitRenewed(ctx, w.Certificate, rev, 30*time.Second); err != nil {
		t.Error(err)
	}
	if w.PID() != pid || w.Exited() != nil {
		t.Errorf("webhook restarted or exited during the CA rotation (pid %d -> %d, %v)", pid, w.PID(), w.Exited())
	}
}

func caSecretOf(ctx context.Context, w *localrun.CertManagerWebhook) (*corev1.Secret, error) {
	ready, _, err := w.CertificateReady(ctx, w.CACertificate)
	if err != nil || !ready {
		return nil, fmt.Errorf("CA Certificate %s not Ready (%v)", w.CACertificate, err)
	}
	s, err := shared.Client.CoreV1().Secrets(w.Namespace).Get(ctx, w.CASecret, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("read CA Secret: %w", err)
	}
	return s, nil
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// certManagerState says what cert-manager last did, for a failure message:
// the overlay's Certificates and the end of cert-manager's log.
func certManagerState(w *localrun.CertManagerWebhook) string {
	var b strings.Builder
	for _, name := range []string{w.CACertificate, w.Certificate} {
		ready, rev, err := w.CertificateReady(context.Background(), name)
		fmt.Fprintf(&b, "Certificate %s: Ready=%v revision %d %v\n", name, ready, rev, err)
	}
	ctx := context.Background()
	serving, err1 := shared.Client.CoreV1().Secrets(w.Namespace).Get(ctx, w.Secret, metav1.GetOptions{})
	ca, err2 := shared.Client.CoreV1().Secrets(w.Namespace).Get(ctx, w.CASecret, metav1.GetOptions{})
	bundle, err3 := w.InjectedBundle(ctx)
	if err := errors.Join(err1, err2, err3); err != nil {
		fmt.Fprintf(&b, "%v\n", err)
	} else {
		fmt.Fprintf(&b, "injected bundle: %s; serving Secret's ca.crt: %s; CA Secret: %s\n",
			serials(bundle), serials(serving.Data["ca.crt"]), serials(ca.Data[corev1.TLSCertKey]))
	}
	log, _ := os.ReadFile(shared.LogPath("cert-manager"))
	lines := strings.Split(strings.TrimSpace(string(log)), "\n")
	fmt.Fprintf(&b, "cert-manager log (%s), last lines:\n  %s", shared.LogPath("cert-manager"), strings.Join(lines[max(0, len(lines)-8):], "\n  "))
	return b.String()
}

// serials names the certificates of a PEM bundle by serial number.
func serials(pemBytes []byte) string {
	var out []string
	for {
		var block *pem.Block
		block, pemBytes = pem.Decode(pemBytes)
		if block == nil {
			return "[" + strings.Join(out, " ") + "]"
		}
		if c, err := x509.ParseCertificate(block.Bytes); err == nil {
			out = append(out, c.SerialNumber.Text(16))
		}
	}
}

// The mistakes users of this overlay make are caught before anything runs,
// with a message naming them: configurations injecting from different
// Certificates, and a serving Certificate that does not name the Service.
func TestCertManagerOverlayMistakesAreNamed(t *testing.T) {
	testenv.NeedCluster(t, shared)
	root, err := cluster.RepoRoot()
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, target, patch, want string
	}{
		{
			name: "the validating configuration injects from the CA Certificate", target: "kind: ValidatingWebhookConfiguration\n    name: termgate",
			patch: "- op: replace\n      path: /metadata/annotations/cert-manager.io~1inject-ca-from\n      value: termgate/termgate-webhook-ca",
			want:  "want one Certificate",
		},
		{
			name: "the serving Certificate names another Service", target: "kind: Certificate\n    name: termgate-webhook-serving",
			patch: "- op: replace\n      path: /spec/dnsNames\n      value: [webhook.termgate.svc]",
			want:  "not the Service termgate-webhook.termgate.svc",
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			rel, err := filepath.Rel(dir, filepath.Join(root, "manifests", "overlays", "cert-manager"))
			if err != nil {
				t.Fatal(err)
			}
			k := "resources:\n- " + rel + "\npatches:\n- target:\n    " + c.target + "\n  patch: |-\n    " + c.patch + "\n"
			if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(k), 0o600); err != nil {
				t.Fatal(err)
			}
			w, err := localrun.StartCertManagerWebhook(context.Background(), localrun.CertManagerWebhookSpec{
				Binary: binary, Cluster: shared, Overlay: dir,
			})
			if err == nil {
				w.Stop()
				t.Fatal("the webhook started from a broken overlay")
			}
			if !strings.Contains(err.Error(), c.want) {
				t.Fatalf("error %q does not say %q", err, c.want)
			}
		})
	}
}
