package scenario

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"

	"termgate.dev/termgate/test/azurefake"
	"termgate.dev/termgate/test/cluster"
	"termgate.dev/termgate/test/ec2fake"
	"termgate.dev/termgate/test/gcefake"
	"termgate.dev/termgate/test/localrun"
)

// EnvOptions say what to run beside a started local cluster.
type EnvOptions struct {
	Cluster *cluster.Cluster
	// Nodes are the cluster's nodes (what cluster.Options.Nodes held).
	Nodes []cluster.NodeSpec
	// Binary is the termgate binary (localrun.Build).
	Binary string
	// AcceleratorBudget shortens the GPU maintenance deadline (GCE gives
	// an hour) so the scenario fits a demo; passed to every agent as
	// --accelerator-maintenance-budget.
	AcceleratorBudget time.Duration
	// Namespace of the workload; created if missing.
	Namespace string
	// Certs is where the webhook's serving certificate comes from:
	// CertsSelfManaged (the default) or CertsCertManager, which needs a
	// cluster started with cluster.Options.CertManager.
	Certs string
	// RealNode installs termgate on the cluster's real node as users
	// install it (the image, `kubectl apply -k` of the self-managed
	// overlay; see StartEnv) instead of running it as local processes,
	// and adds the real node, as a Spot VM, first among Env.Nodes. Needs a
	// cluster started with cluster.Options.RealNode and Certs self-managed.
	RealNode bool
	// Say reports set-up steps and Warn what did not start; nil says nothing.
	Say, Warn func(format string, args ...any)
}

// Env is the local cluster with termgate running on it the way it runs on a
// real one: a fake metadata server per node, one agent process per node, the
// webhook registered with the API server, and a workload.
type Env struct {
	Cluster  *cluster.Cluster
	Client   kubernetes.Interface
	Fleet    *gcefake.Fleet
	Nodes    []cluster.NodeSpec
	Workload *Workload
	// Webhook is nil when it could not start; WebhookErr says why. The
	// scenarios that need it then fail instead of pretending.
	Webhook    *localrun.Webhook
	WebhookErr error
	// AgentFlags are the flags every agent runs with.
	AgentFlags        []string
	AcceleratorBudget time.Duration

	agents []*localrun.Agent
	binary string // the agents' binary, to restart one
	// certManager is the webhook when cert-manager issues its certificate.
	certManager *localrun.CertManagerWebhook
	// RealNode is set when termgate runs as pods on the real node
	// (EnvOptions.RealNode); nil otherwise.
	RealNode *RealNodeInstall
	// ownNamespaces are termgate's namespaces when it runs as pods in the
	// cluster: the scenarios leave their pods out of their figures.
	ownNamespaces []string
	// ec2 and azure are the stand-in metadata services of the nodes on
	// those clouds, by node name.
	ec2   map[string]*ec2fake.Server
	azure map[string]*azurefake.Server
}

// Certificate sources of the webhook (EnvOptions.Certs).
const (
	CertsSelfManaged = "self-managed"
	CertsCertManager = "cert-manager"
)

// StartEnv starts everything beside the cluster. On error, whatever started
// is stopped again.
func StartEnv(ctx context.Context, o EnvOptions) (_ *Env, err error) {
	if o.Certs != "" && o.Certs != CertsSelfManaged && o.Certs != CertsCertManager {
		return nil, fmt.Errorf("webhook certificates %q: want %s or %s", o.Certs, CertsSelfManaged, CertsCertManager)
	}
	if o.RealNode && o.Certs == CertsCertManager {
		return nil, fmt.Errorf("webhook certificates %s on the real node: not supported here, use %s", CertsCertManager, CertsSelfManaged)
	}
	if o.Say == nil {
		o.Say = func(string, ...any) {}
	}
	if o.Warn == nil {
		o.Warn = o.Say
	}
	if o.AcceleratorBudget <= 0 {
		o.AcceleratorBudget = 45 * time.Second
	}
	// e, not a named result, is what the deferred clean-up stops: the
	// error returns below hand back nil.
	e := &Env{
		Cluster: o.Cluster, Client: o.Cluster.Client, Fleet: gcefake.NewFleet(), Nodes: o.Nodes,
		AcceleratorBudget: o.AcceleratorBudget,
		AgentFlags:        []string{"--accelerator-maintenance-budget=" + o.AcceleratorBudget.String()},
	}
	defer func() {
		if err != nil {
			e.Stop()
		}
	}()
	if err := e.startMetadata(); err != nil {
		return nil, err
	}
	if o.RealNode {
		if err := e.startOnRealNode(ctx, o); err != nil {
			return nil, err
		}
		return e, nil
	}
	began := time.Now()
	switch o.Certs {
	case "", CertsSelfManaged:
		// The webhook's own account, under the shipped RBAC, CA-bundle
		// policy and FlowSchema, as a replica in the cluster runs.
		e.Webhook, e.WebhookErr = localrun.StartWebhookWithOwnIdentity(ctx, o.Cluster, localrun.WebhookSpec{Binary: o.Binary})
		if e.WebhookErr == nil {
			o.Say("webhook serving on %s with its own service account's token, self-managed CA injected, configurations registered (%s)", e.Webhook.Addr, since(began))
		}
	case CertsCertManager:
		e.certManager, e.WebhookErr = localrun.StartCertManagerWebhook(ctx, localrun.CertManagerWebhookSpec{
			Binary: o.Binary, Cluster: o.Cluster,
		})
		if e.WebhookErr == nil {
			cm := e.certManager
			e.Webhook = cm.Webhook
			o.Say("webhook serving on %s with the certificate the real cert-manager issued (Certificate %s/%s from CA %s), "+
				"CA bundle injected by cert-manager's CA injector; overlay applied to webhook Ready in %s "+
				"(certificate Ready in %s, bundle injected in %s)",
				cm.Addr, cm.Namespace, cm.Certificate, cm.CACertificate, cm.ReadyAt.Sub(cm.AppliedAt).Round(time.Millisecond),
				cm.CertificateReadyAt.Sub(cm.AppliedAt).Round(time.Millisecond), cm.InjectedAt.Sub(cm.AppliedAt).Round(time.Millisecond))
		}
	}
	if e.WebhookErr != nil {
		o.Warn("webhook NOT running (the pinned-pod scenario will fail): %v", e.WebhookErr)
	}
	began = time.Now()
	if err := e.startAgents(ctx, o.Binary); err != nil {
		return nil, err
	}
	o.Say("%d agents ready, one per node, flags %v (%s)", len(e.agents), e.AgentFlags, since(began))
	began = time.Now()
	if e.Workload, err = DeployWorkload(ctx, e.Client, o.Namespace, e.Nodes); err != nil {
		return nil, err
	}
	o.Say("workload Ready: %s (%s)", e.Workload.Summary, since(began))
	return e, nil
}

func since(t time.Time) time.Duration { return time.Since(t).Round(time.Millisecond) }

func (e *Env) startMetadata() error {
	for _, n := range e.Nodes {
		if n.Cloud != "" && n.Cloud != cluster.CloudGCE {
			if err := e.startStandIn(n); err != nil {
				return err
			}
			continue
		}
		_, err := e.Fleet.Add(gcefake.Instance{
			Name: n.Name, Zone: n.Zone, MachineType: n.MachineType, Preemptible: n.Spot, Accelerator: n.Accelerator,
		})
		if err != nil {
			return fmt.Errorf("fake metadata server for %s: %w", n.Name, err)
		}
	}
	return nil
}

// startAgents starts one agent per node, all at once, each with its own
// pod-bound identity: each waits for its own cache sync and first metadata
// reads.
func (e *Env) startAgents(ctx context.Context, binary string) error {
	e.binary = binary
	// Each agent runs as its DaemonSet pod would: with a token bound to a
	// pod on its node, under the shipped RBAC and Node policy, installed
	// once for all of them.
	spec := localrun.IdentitySpec{Admin: e.Cluster.Client, AdminConfig: e.Cluster.Config, Dir: e.Cluster.Dir}
	if err := localrun.InstallAgentPermissions(ctx, spec); err != nil {
		return err
	}
	agents := make([]*localrun.Agent, len(e.Nodes))
	errs := make([]error, len(e.Nodes))
	var wg sync.WaitGroup
	for i, n := range e.Nodes {
		wg.Go(func() {
			s := spec
			s.Node = n.Name
			id, err := localrun.AgentIdentityOn(ctx, s)
			if err != nil {
				errs[i] = err
				return
			}
			agents[i], errs[i] = localrun.StartAgent(ctx, e.metadataOf(n, localrun.AgentSpec{
				Binary: binary, Dir: e.Cluster.Dir, Kubeconfig: id.Kubeconfig,
				Node: n.Name, Flags: e.AgentFlags, Pod: id.Pod,
			}))
		})
	}
	wg.Wait()
	for _, a := range agents {
		if a != nil {
			e.agents = append(e.agents, a)
		}
	}
	return errors.Join(errs...)
}

// Metadata returns the fake metadata server of a node.
func (e *Env) Metadata(node string) (*gcefake.Server, error) {
	s, ok := e.Fleet.Get(node)
	if !ok {
		return nil, fmt.Errorf("no metadata server for node %s", node)
	}
	return s, nil
}

// Healthy returns an error if the cluster or the webhook has exited.
func (e *Env) Healthy() error {
	errs := []error{e.Cluster.Healthy()}
	if e.Webhook != nil {
		errs = append(errs, e.Webhook.Exited())
	}
	return errors.Join(errs...)
}

// LogPaths names the log of every process the environment started.
func (e *Env) LogPaths() []string {
	var paths []string
	for _, a := range e.agents {
		paths = append(paths, a.LogPath())
	}
	if e.Webhook != nil {
		paths = append(paths, e.Webhook.LogPath())
	}
	return paths
}

// Stop stops the agents and the webhook (in parallel: each may take its
// shutdown grace) and closes the metadata servers. The cluster is the
// caller's. Safe to call more than once.
func (e *Env) Stop() {
	var wg sync.WaitGroup
	for _, a := range e.agents {
		wg.Go(a.Stop)
	}
	switch {
	case e.certManager != nil:
		wg.Go(e.certManager.Stop)
	case e.Webhook != nil:
		wg.Go(e.Webhook.Stop)
	}
	wg.Wait()
	e.agents, e.Webhook, e.certManager = nil, nil, nil
	_ = e.Fleet.Close()
	e.closeStandIns()
}
