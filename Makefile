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
VERSION_PKG := k8s.io/component-base/version
CONTROLPLANE_LDFLAGS := -s -w \
	-X $(VERSION_PKG).gitVersion=$(K8S_VERSION) \
	-X $(VERSION_PKG).gitMajor=1 -X $(VERSION_PKG).gitMinor=$(K8S_MINOR) \
	-X $(VERSION_PKG).gitTreeState=clean \
	-X $(VERSION_PKG).buildDate=2026-01-01T00:00:00Z
KWOK_STAGES := node/fast/node-initialize node/heartbeat-with-lease/node-heartbeat-with-lease \
	pod/fast/pod-ready pod/fast/pod-complete
TEST_TIMEOUT ?= 40m

.PHONY: build test unit lint demo bench bench-agent bench-webhook cluster binaries clean

build:
	$(GO) build -o $(BIN)/termgate ./cmd/termgate

## binaries: the local cluster's control plane and kwok, rebuilt only when their pins change.
binaries: $(BIN)/controlplane $(BIN)/kwok-$(KWOK_VERSION).stamp

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

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

unit:
	$(GO) test -short -count=1 ./...

## test: every test, unit and integration, on the local cluster.
test: binaries lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

## demo: the main job end to end on a local cluster.
demo: binaries build
	$(GO) run ./cmd/demo $(DEMO_FLAGS)

## cluster: the local cluster in the foreground until Ctrl-C.
cluster: binaries
	$(GO) run ./test/cmd/localcluster $(CLUSTER_FLAGS)

bench: bench-agent bench-webhook

bench-agent: binaries
	$(GO) run ./test/bench/agent

bench-webhook: binaries
	$(GO) run ./test/bench/webhook -cluster

clean:
	rm -rf $(BIN)
