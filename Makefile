# termgate. `make demo` and `make test` are the two commands the README gives;
# both build what they need on a fresh machine. The Kubernetes control plane
# and kwok are built from Go modules once and cached under bin/.
SHELL := /bin/bash
GO ?= go
BIN := $(CURDIR)/bin
export PATH := $(BIN):$(PATH)

K8S_VERSION := v1.37.2
K8S_MINOR := $(word 2,$(subst ., ,$(K8S_VERSION)))
KWOK_VERSION := v0.8.0
AEMM_VERSION := v1.13.0
VERSION_PKG := k8s.io/component-base/version
CONTROLPLANE_LDFLAGS := -s -w \
	-X $(VERSION_PKG).gitVersion=$(K8S_VERSION) \
	-X $(VERSION_PKG).gitMajor=1 -X $(VERSION_PKG).gitMinor=$(K8S_MINOR) \
	-X $(VERSION_PKG).gitTreeState=clean \
	-X $(VERSION_PKG).buildDate=2026-01-01T00:00:00Z
KWOK_STAGES := node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
	pod/fast/pod-ready pod/fast/pod-complete
TEST_TIMEOUT ?= 40m

.PHONY: chart-test build test unit lint demo bench bench-agent bench-webhook cluster binaries clean
.PHONY: image real-node-binaries

build:
	$(GO) build -o $(BIN)/termgate ./cmd/termgate

## binaries: the local cluster's control plane, kwok, cert-manager and service controller, rebuilt only when their pins change.
binaries: $(BIN)/controlplane $(BIN)/kwok-$(KWOK_VERSION).stamp $(BIN)/cert-manager $(BIN)/service-controller real-node-binaries \
	$(BIN)/ec2-metadata-mock-$(AEMM_VERSION).stamp $(BIN)/prometheus

# One multi-call binary: etcd, kube-apiserver, kube-scheduler,
# kube-controller-manager and kubectl link once.
$(BIN)/controlplane: test/controlplane/go.mod test/controlplane/go.sum test/controlplane/main.go
	@mkdir -p $(BIN)
	@echo "building the Kubernetes $(K8S_VERSION) control plane (about 10 minutes on 2 cores the first time)"
	cd test/controlplane && $(GO) build -trimpath -ldflags '$(CONTROLPLANE_LDFLAGS)' -o $@ .
	ln -sf controlplane $(BIN)/kubectl

$(BIN)/kwok-$(KWOK_VERSION).stamp:
	@mkdir -p $(BIN)/kwok-stages
	GOBIN=$(BIN) GOFLAGS= $(GO) install sigs.k8s.io/kwok/cmd/kwok@$(KWOK_VERSION)
	dir=$$($(GO) env GOMODCACHE)/sigs.k8s.io/kwok@$(KWOK_VERSION)/kustomize/stage; \
	for s in $(KWOK_STAGES); do install -m 0644 $$dir/$$s.yaml $(BIN)/kwok-stages/; done
	touch $@

# AWS's own IMDS simulator, which the EC2 integration tests run where it
# covers the case (test/ec2fake covers the rest).
$(BIN)/ec2-metadata-mock-$(AEMM_VERSION).stamp:
	@mkdir -p $(BIN)
	GOBIN=$(BIN) GOFLAGS= $(GO) install github.com/aws/amazon-ec2-metadata-mock/cmd/ec2-metadata-mock@$(AEMM_VERSION)
	touch $@

# cert-manager's certificates controllers, CA and SelfSigned issuers and CA
# injector, from cert-manager's own packages (test/certmanager/main.go).
$(BIN)/cert-manager: test/certmanager/go.mod test/certmanager/go.sum test/certmanager/main.go
	@mkdir -p $(BIN)
	cd test/certmanager && CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $@ .

## helm: the Helm the chart's tests use (the chart module's tool), for
## trying the chart on `make cluster`; no test needs the binary.
HELM_VERSION = $(shell awk '$$1 == "helm.sh/helm/v4" {print $$2}' charts/termgate/test/go.mod)
$(BIN)/helm: charts/termgate/test/go.mod charts/termgate/test/go.sum
	@mkdir -p $(BIN)
	cd charts/termgate/test && CGO_ENABLED=0 $(GO) build -trimpath \
		-ldflags '-s -w -X helm.sh/helm/v4/internal/version.version=$(HELM_VERSION)' \
		-o $(abspath $@) helm.sh/helm/v4/cmd/helm

# Prometheus itself, for the end-to-end test of the chart's alerts
# (test/e2e/monitoring); no service discovery but static targets is linked.
$(BIN)/prometheus: test/prometheus/go.mod test/prometheus/go.sum
	@mkdir -p $(BIN)
	cd test/prometheus && CGO_ENABLED=0 $(GO) build -trimpath -tags remove_all_sd -ldflags '-s -w' \
		-o $@ github.com/prometheus/prometheus/cmd/prometheus

# The upstream service controller (k8s.io/cloud-provider, the control
# plane's pins) with a cloud whose load balancers run on this machine
# (test/servicecontroller); `cluster.Options.LoadBalancers` runs it. Built
# with the control plane's flags (cgo as it comes, -trimpath), so the
# packages both link compile once.
$(BIN)/service-controller: test/servicecontroller/go.mod test/servicecontroller/go.sum \
		$(wildcard test/servicecontroller/*.go test/servicecontroller/netlb/*.go)
	@mkdir -p $(BIN)
	cd test/servicecontroller && $(GO) build -trimpath -ldflags '-s -w' -o $@ .

## real-node-binaries: kubelet, containerd, runc and the CNI plugins of the
## local cluster's optional real node (test/cluster Options.RealNode), each
## from a Go module of its own under test/ so that none of them moves the
## control plane's pins, plus the node's own images (pause and the workload
## the end-to-end tests run), built offline like termgate's.
REALNODE_BIN := $(BIN)/realnode
CONTAINERD_VERSION := v2.4.2
RUNC_VERSION := v1.5.3
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
real-node-binaries: $(REALNODE_BIN)/kubelet $(REALNODE_BIN)/containerd $(REALNODE_BIN)/runc \
	$(REALNODE_BIN)/bridge $(REALNODE_BIN)/images.stamp

$(REALNODE_BIN)/kubelet: test/kubelet/go.mod test/kubelet/go.sum test/kubelet/main.go
	@mkdir -p $(REALNODE_BIN)
	@echo "building the kubelet $(K8S_VERSION) (a few minutes on 2 cores the first time)"
	cd test/kubelet && $(GO) build -trimpath -ldflags '$(CONTROLPLANE_LDFLAGS)' -o $@ .

# containerd-shim-runc-v2 re-executes itself, so three binaries, not one.
$(REALNODE_BIN)/containerd: test/noderuntime/containerd/go.mod test/noderuntime/containerd/go.sum
	@mkdir -p $(REALNODE_BIN)
	cd test/noderuntime/containerd && for cmd in ctr containerd-shim-runc-v2 containerd; do \
		CGO_ENABLED=0 $(GO) build -trimpath \
			-ldflags '-s -w -X github.com/containerd/containerd/v2/version.Version=$(CONTAINERD_VERSION)' \
			-o $(REALNODE_BIN)/$$cmd github.com/containerd/containerd/v2/cmd/$$cmd || exit 1; done

# runc needs cgo and libseccomp: containerd gives every sandbox a seccomp profile.
$(REALNODE_BIN)/runc: test/noderuntime/runc/go.mod test/noderuntime/runc/go.sum
	@mkdir -p $(REALNODE_BIN)
	@pkg-config --exists libseccomp 2>/dev/null || { \
		echo "installing libseccomp-dev and pkg-config (runc is built with seccomp support)"; \
		$(SUDO) apt-get install -y libseccomp-dev pkg-config || \
		{ $(SUDO) apt-get update && $(SUDO) apt-get install -y libseccomp-dev pkg-config; }; }
	cd test/noderuntime/runc && CGO_ENABLED=1 $(GO) build -trimpath -tags seccomp \
		-ldflags '-s -w -X main.version=$(RUNC_VERSION:v%=%)' -o $@ github.com/opencontainers/runc

# bridge and host-local; loopback is containerd's own (use_internal_loopback).
$(REALNODE_BIN)/bridge: test/noderuntime/cni/go.mod test/noderuntime/cni/go.sum
	@mkdir -p $(REALNODE_BIN)
	cd test/noderuntime/cni && for p in ipam/host-local main/bridge; do \
		CGO_ENABLED=0 $(GO) build -trimpath -ldflags '-s -w' -o $(REALNODE_BIN)/$${p#*/} \
			github.com/containernetworking/plugins/plugins/$$p || exit 1; done

$(REALNODE_BIN)/images.stamp: $(wildcard test/imagebuild/*.go test/imagebuild/*/*.go) \
		test/imagebuild/go.mod test/imagebuild/go.sum
	@mkdir -p $(REALNODE_BIN)
	cd test/imagebuild && $(GO) run . testimages -o $(REALNODE_BIN)
	touch $@

## image: the image users run, as an OCI archive (bin/termgate-image.tar) built
## offline: one image index for linux/amd64 and linux/arm64, each the static
## binary on an empty base, user 65532, with OCI labels. Push both with e.g.
## `skopeo copy --all oci-archive:bin/termgate-image.tar docker://REGISTRY/termgate:TAG`.
IMAGE ?= termgate.local/termgate:dev
IMAGE_SOURCE ?= https://github.com/termgate/termgate
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
IMAGE_ARCHES := amd64 arm64
image:
	@mkdir -p $(BIN)
	for arch in $(IMAGE_ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$arch $(GO) build -trimpath -ldflags '-s -w' \
			-o $(BIN)/termgate-linux-$$arch ./cmd/termgate || exit 1; done
	cd test/imagebuild && $(GO) run . termgate \
		-binary linux/amd64=$(BIN)/termgate-linux-amd64 -binary linux/arm64=$(BIN)/termgate-linux-arm64 \
		-version '$(VERSION)' -revision '$(REVISION)' -source '$(IMAGE_SOURCE)' \
		-ref $(IMAGE) -o $(BIN)/termgate-image.tar

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

## chart-test: the Helm chart rendered through Helm's own Go SDK (a module of
## its own, charts/termgate/test) and compared with the kustomize install.
## (Its install/ package, the chart installed through the SDK on the real
## node, runs in `make test`'s real-node chain.)
chart-test:
	cd charts/termgate/test && $(GO) vet ./... && $(GO) test -count=1 .

## chart-docs: rewrite docs/helm.md's values table from the chart's values.
.PHONY: chart-docs
chart-docs:
	cd charts/termgate/test && $(GO) test -count=1 -run TestTheValuesTableIsTheChartsValues . -update

## manifests: rewrite manifests/static/<mode> (the kustomize install) from
## the chart's render; `make chart-test` fails while they differ.
.PHONY: manifests
manifests:
	cd charts/termgate/test && $(GO) test -count=1 -run TestTheStaticManifestsAreTheChartsRender . -update

unit:
	$(GO) test -short -count=1 ./...

## test: every test, unit and integration, on the local cluster.
# The packages with a real node take turns on it (a machine-wide lock). Run
# as a chain of their own beside the rest, none holds one of go test's
# parallel slots while it waits for another; their output follows the rest's.
REALNODE_PKGS := ./test/e2e/realnode ./test/e2e/realnodecm ./test/cluster
# The 100-node preemption answers in time only with the cores to itself:
# beside the other clusters its webhook's re-reads of marked nodes outlast
# their timeout and the confinement fails closed (seen once in a run of
# make test). It runs last, alone.
ALONE_PKGS := ./test/e2e/massmark
test: binaries image lint chart-test
	cd test/imagebuild && $(GO) test -count=1 ./...
	cd test/servicecontroller && $(GO) test -count=1 ./netlb/
	@{ $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -p 1 $(REALNODE_PKGS); a=$$?; \
		cd charts/termgate/test && $(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./install/; b=$$?; \
		exit $$((a | b)); } > $(BIN)/realnode-test.log 2>&1 & realnode=$$!; \
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v -e '/test/e2e/realnode' -e '/test/cluster$$' -e '/test/e2e/massmark'); rest=$$?; \
	wait $$realnode; rn=$$?; cat $(BIN)/realnode-test.log; \
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) $(ALONE_PKGS); alone=$$?; \
	echo "go test: real-node packages rc=$$rn, the others rc=$$rest, alone rc=$$alone"; [ $$rest -eq 0 ] && [ $$rn -eq 0 ] && [ $$alone -eq 0 ]

## demo: the main job end to end on a local cluster.
demo: binaries build image
	$(GO) run ./test/cmd/demo $(DEMO_FLAGS)

## cluster: the local cluster in the foreground until Ctrl-C.
cluster: binaries image $(BIN)/helm
	$(GO) run ./test/cmd/localcluster $(CLUSTER_FLAGS)

## bench: every benchmark; each prints a table and writes bin/bench/<name>.json.
bench: bench-agent bench-webhook bench-storm bench-scale bench-memory

# The benchmarks run on kwok nodes: the control plane and kwok are all they
# need of `make binaries` (no cert-manager, no real node).
bench-agent: $(BIN)/controlplane $(BIN)/kwok-$(KWOK_VERSION).stamp $(BIN)/service-controller
	$(GO) run ./test/bench/agent

bench-webhook: $(BIN)/controlplane $(BIN)/kwok-$(KWOK_VERSION).stamp
	$(GO) run ./test/bench/webhook -cluster

## bench-scale: 500 of 1,000 nodes preempted within a second, 10,000
## evictions, against a floor of the same evictions in the same run (shape T);
## SCALE_FLAGS=-shape=Z for the zone shape: 500 Spot nodes of one zone among
## 5,000, budgets, a bystander and three webhook replicas.
.PHONY: bench-scale
bench-scale: $(BIN)/controlplane $(BIN)/kwok-$(KWOK_VERSION).stamp
	$(GO) run ./test/bench/scale $(SCALE_FLAGS)

## bench-storm: 50 of 200 nodes preempted within a second, termgate as deployed.
.PHONY: bench-storm
bench-storm: $(BIN)/controlplane $(BIN)/kwok-$(KWOK_VERSION).stamp
	$(GO) run ./test/bench/storm $(STORM_FLAGS)

## bench-memory: the webhook's heap per cached node (5,000 nodes) and per
## followed node (500 nodes, 20 pods each), and their sum at that scale.
## No cluster: the structures are built in the test process.
.PHONY: bench-memory
bench-memory:
	@mkdir -p $(BIN)/bench
	set -o pipefail; $(GO) test -run '^$$' -bench '^BenchmarkMemory' -benchtime 1x ./webhook/... | tee $(BIN)/bench/memory.txt
	@awk -v on="commit $$(git rev-parse --short=12 HEAD)" '\
		/^BenchmarkMemory/ { for (i = 3; i < NF; i++) { if ($$(i+1) == "kib/cached-node") c = $$i; if ($$(i+1) == "kib/followed-node") f = $$i } } \
		END { if (c == "" || f == "") { print "bench-memory: a figure is missing" > "/dev/stderr"; exit 1 } \
			printf "{\n  \"measured_on\": \"%s\",\n  \"scale_webhook_kib_per_cached_node\": %s,\n  \"scale_webhook_kib_per_followed_node\": %s,\n  \"scale_webhook_index_mib_at_target\": %.2f\n}\n", on, c, f, (5000 * c + 500 * f) / 1024 }' \
		$(BIN)/bench/memory.txt > $(BIN)/bench/memory.json
	@cat $(BIN)/bench/memory.json

clean:
	rm -rf $(BIN)
