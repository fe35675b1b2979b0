package cluster

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

const serviceCIDR = "10.0.0.0/24"

func (c *Cluster) etcdArgs(clientURL string, peerPort int) []string {
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	return []string{
		"--name=local",
		"--data-dir=" + filepath.Join(c.Dir, "etcd"),
		"--listen-client-urls=" + clientURL,
		"--advertise-client-urls=" + clientURL,
		"--listen-peer-urls=" + peerURL,
		"--initial-advertise-peer-urls=" + peerURL,
		"--initial-cluster=local=" + peerURL,
		// A throwaway test store: durability buys nothing and fsync costs
		// most of etcd's write latency on a shared disk.
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
}

func (c *Cluster) apiserverArgs(etcdURL string, port int) []string {
	return []string{
		"--etcd-servers=" + etcdURL,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + c.Dir,
		"--tls-cert-file=" + c.pki.serverCert,
		"--tls-private-key-file=" + c.pki.serverKey,
		"--client-ca-file=" + c.pki.caFile,
		"--service-account-key-file=" + c.pki.saPub,
		"--service-account-signing-key-file=" + c.pki.saKey,
		"--service-account-issuer=https://kubernetes.default.svc",
		"--api-audiences=https://kubernetes.default.svc",
		"--authorization-mode=Node,RBAC",
		"--service-cluster-ip-range=" + serviceCIDR,
		"--allow-privileged=true",
		// The kubernetes Service would point at 127.0.0.1, which Endpoints
		// validation refuses; nothing in the tests dials it.
		"--endpoint-reconciler-type=none",
		"--enable-admission-plugins=NodeRestriction",
		// Webhook calls go straight to a Ready endpoint of the Service (a
		// real node's pod IP): there is no kube-proxy for ClusterIPs.
		"--enable-aggregator-routing=" + strconv.FormatBool(c.opts.RealNode),
		"--profiling=false",
		"--v=" + strconv.Itoa(c.opts.Verbosity),
	}
}

// defaultNodeLease is the kubelet's own lease duration.
const defaultNodeLease = 40 * time.Second

func (c *Cluster) nodeLease() time.Duration {
	if c.opts.NodeLease > 0 {
		return c.opts.NodeLease
	}
	return defaultNodeLease
}

func (c *Cluster) controllerManagerArgs() []string {
	return []string{
		"--node-monitor-grace-period=" + (c.nodeLease() * 5 / 4).String(),
		"--kubeconfig=" + c.Kubeconfig,
		// '*' is every controller enabled by default: replicaset, deployment,
		// daemonset, job, disruption (PDB status), serviceaccount and its
		// token controller, garbage collector, namespace, node lifecycle...
		"--controllers=*",
		"--service-account-private-key-file=" + c.pki.saKey,
		"--root-ca-file=" + c.pki.caFile,
		"--use-service-account-credentials=false",
		"--leader-elect=false",
		"--secure-port=0",
		"--concurrent-deployment-syncs=10",
		"--concurrent-replicaset-syncs=10",
		// New nodes carry the not-ready taint until the node lifecycle
		// controller's next pass; 1 s instead of 5 s keeps AddNodes quick.
		"--node-monitor-period=1s",
		"--kube-api-qps=200",
		"--kube-api-burst=400",
		"--v=" + strconv.Itoa(c.opts.Verbosity),
	}
}

func (c *Cluster) schedulerArgs() []string {
	return []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--leader-elect=false",
		"--secure-port=0",
		"--v=" + strconv.Itoa(c.opts.Verbosity),
	}
}

// connect builds the admin client configuration and writes the kubeconfig.
func (c *Cluster) connect(port int) error {
	host := "https://127.0.0.1:" + strconv.Itoa(port)
	c.Config = &rest.Config{
		Host: host,
		TLSClientConfig: rest.TLSClientConfig{
			CAFile: c.pki.caFile, CertFile: c.pki.adminCert, KeyFile: c.pki.adminKey,
		},
		QPS: 200, Burst: 400,
	}
	kc := clientcmdapi.NewConfig()
	kc.Clusters["local"] = &clientcmdapi.Cluster{Server: host, CertificateAuthority: c.pki.caFile}
	kc.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificate: c.pki.adminCert, ClientKey: c.pki.adminKey}
	kc.Contexts["local"] = &clientcmdapi.Context{Cluster: "local", AuthInfo: "admin"}
	kc.CurrentContext = "local"
	c.Kubeconfig = filepath.Join(c.Dir, "kubeconfig")
	if err := clientcmd.WriteToFile(*kc, c.Kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	client, err := kubernetes.NewForConfig(c.Config)
	if err != nil {
		return fmt.Errorf("build client: %w", err)
	}
	c.Client = client
	return nil
}

// waitAPIServerReady polls /readyz until it answers 200, a component exits,
// or the API server's own start-up budget runs out.
func (c *Cluster) waitAPIServerReady(ctx context.Context) error {
	const budget = 60 * time.Second // far above the ~3 s it takes when healthy
	ctx, cancel := context.WithTimeout(ctx, budget)
	defer cancel()
	rt, err := rest.TransportFor(c.Config)
	if err != nil {
		return fmt.Errorf("build transport: %w", err)
	}
	hc := &http.Client{Transport: rt, Timeout: 2 * time.Second}
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		if err := c.Healthy(); err != nil {
			return err
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, c.Config.Host+"/readyz", nil)
		if resp, err := hc.Do(req); err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("kube-apiserver not ready after %s (log: %s): %w", budget, c.LogPath("kube-apiserver"), ctx.Err())
		case <-tick.C:
		}
	}
}

// kwokNodeAnnotation selects the nodes kwok plays the kubelet for.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

func (c *Cluster) startKwok(stages []string) error {
	args := []string{
		"--kubeconfig=" + c.Kubeconfig,
		"--manage-all-nodes=false",
		"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
		"--node-lease-duration-seconds=" + strconv.Itoa(int(c.nodeLease()/time.Second)),
		"--cidr=10.64.0.0/12",
		"--node-ip=10.128.0.2",
	}
	for _, s := range stages {
		args = append(args, "--config="+s)
	}
	return c.start("kwok", args...)
}

// writeKwokStages lists the stage files kwok runs: kwok's own node and pod
// life-cycle stages (copied from the kwok module into bin/kwok-stages by the
// Makefile) and termgate's pod-delete stage, which finishes a deletion after
// PodDeleteDelay but, like a kubelet, leaves pods with finalizers Terminating.
func (c *Cluster) writeKwokStages() ([]string, error) {
	stages := []string{}
	for _, f := range []string{"node-initialize.yaml", "node-heartbeat-with-lease.yaml", "pod-ready.yaml", "pod-complete.yaml"} {
		stages = append(stages, filepath.Join(c.bins.kwokStages, f))
	}
	podDelete := filepath.Join(c.Dir, "pod-delete.yaml")
	body := fmt.Sprintf(podDeleteStage, c.opts.PodDeleteDelay.Milliseconds())
	if err := os.WriteFile(podDelete, []byte(body), 0o600); err != nil {
		return nil, fmt.Errorf("write kwok pod-delete stage: %w", err)
	}
	return append(stages, podDelete), nil
}

const podDeleteStage = `apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: .metadata.deletionTimestamp
      operator: Exists
    - key: .metadata.finalizers
      operator: DoesNotExist
  delay:
    durationMilliseconds: %d
  next:
    delete: true
`
