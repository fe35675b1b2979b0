// Command kubelet is the kubelet of the local cluster's real node, built from
// the same k8s.io/kubernetes release as the control plane in
// test/controlplane. It lives in a module of its own so that its extra
// dependencies (cAdvisor, the CRI client, ...) never change the control
// plane's go.sum and retrigger that much longer build.
package main

import (
	"context"
	"os"

	"k8s.io/component-base/cli"
	_ "k8s.io/component-base/logs/json/register"          // the --logging-format=json choice
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics on /metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // the build-info metric
	"k8s.io/kubernetes/cmd/kubelet/app"
)

func main() {
	os.Exit(cli.Run(app.NewKubeletCommand(context.Background())))
}
