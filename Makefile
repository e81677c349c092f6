# trading-operator: the tradingd runtime and the TradingStack operator.
# `make run` starts the API on a local or throwaway database; `make test` runs everything.

SHELL := /usr/bin/env bash -o pipefail
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/findmy/trading-operator/runtime.Version=$(VERSION)
TEST_FLAGS ?= -race -count=1 -timeout 30m

.PHONY: all
all: build

##@ Development

.PHONY: fmt
fmt: ## gofmt the tree
	gofmt -w $$(git ls-files '*.go')

.PHONY: vet
vet: ## go vet, a gofmt check and a go mod tidy check
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	@$(GO) mod tidy -diff || { echo "go.mod/go.sum are not tidy: run go mod tidy"; exit 1; }
	$(GO) vet ./...

.PHONY: envtest-assets
envtest-assets: ## build kube-apiserver, etcd, kubectl and controller-gen from the Go module proxy (once)
	@hack/envtest-assets.sh >/dev/null

.PHONY: verify-generated
verify-generated: ## fail when the CRD, RBAC, deepcopy files or docs/ differ from what the markers and openapi.json generate
	@sum() { find api config docs -type f -print0 | sort -z | xargs -0 sha256sum; }; before=$$(sum); \
	$(MAKE) -s manifests generate docs >/dev/null; \
	if [ "$$before" != "$$(sum)" ]; then echo "generated files were stale (now regenerated): review and commit api/, config/ and docs/"; exit 1; fi

.PHONY: test
test: vet envtest-assets verify-generated promtool-test ## vet, verify-generated and promtool-test, then every test with the race detector against real PostgreSQL, Redis and kube-apiserver
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) hack/services.sh $(GO) test $(TEST_FLAGS) ./...

.PHONY: promtool-test
promtool-test: ## promtool check rules and promtool test rules on config/prometheus (installs Debian's prometheus package when promtool is missing)
	hack/promtool.sh

.PHONY: docs
docs: ## regenerate docs/tradingstack.md (from the CRD) and docs/api.md (from runtime/http/openapi.json)
	$(GO) run ./hack/crd-docs

.PHONY: build
build: ## build bin/tradingd and bin/manager
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/tradingd ./cmd/tradingd
	$(GO) build -ldflags "$(LDFLAGS) -X github.com/findmy/trading-operator/api/v1alpha1.DefaultRuntimeImage=$(IMG)" -o bin/manager ./cmd/manager

.PHONY: run
run: build ## start tradingd with demo users on a local or throwaway database and print how to log in
	hack/services.sh hack/run.sh

# DEMO_FLAGS=-once ends the demo (cleaning up) after the scripted session. The in-process
# operator gets bin/manager's flags, so its default runtime image is IMG as in a deployment.
.PHONY: demo
demo: build ## the operator on a local control plane with the sample TradingStack, then a trader session on tradingd configured from what it generated; Ctrl-C cleans up
	@# Built, not `go run`: go run exits 1 on Ctrl-C even when the demo cleaned up and exited 0.
	$(GO) build -ldflags "$(LDFLAGS) -X github.com/findmy/trading-operator/api/v1alpha1.DefaultRuntimeImage=$(IMG)" -o bin/demo ./hack/demo
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) hack/services.sh bin/demo $(DEMO_FLAGS)

.PHONY: bench
bench: build ## load-test tradingd against the local PostgreSQL, with baselines in the same run
	hack/services.sh $(GO) run ./hack/bench

.PHONY: bench-operator
bench-operator: envtest-assets ## the operator on envtest: 200 TradingStacks, time to converge, writes per stack, reconciles/s, peak memory
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) $(GO) run ./hack/bench-operator -stacks 200

##@ Operator

# The operator image; it holds /manager and /tradingd, and is also the runtime's default image.
IMG ?= ghcr.io/findmy/trading-operator:$(VERSION)
CONTROLLER_GEN ?= bin/controller-gen
CONTROLLER_TOOLS_VERSION ?= v0.23.0
KUBECTL ?= $(shell [ -x bin/k8s/1.37.2/kubectl ] && echo bin/k8s/1.37.2/kubectl || echo kubectl)
CONTAINER_TOOL ?= docker

$(CONTROLLER_GEN): ## controller-gen, pinned, from the Go module proxy (hack/envtest-assets.sh builds the same)
	GOBIN=$(CURDIR)/bin $(GO) install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_TOOLS_VERSION)

.PHONY: manifests
manifests: $(CONTROLLER_GEN) ## generate the CRD (config/crd/bases) and the RBAC role (config/rbac/role.yaml) from the markers
	$(CONTROLLER_GEN) rbac:roleName=manager-role crd paths="./api/..." paths="./controllers/..." output:crd:artifacts:config=config/crd/bases output:rbac:artifacts:config=config/rbac

.PHONY: generate
generate: $(CONTROLLER_GEN) ## generate the deepcopy functions of api/
	$(CONTROLLER_GEN) object:headerFile=hack/boilerplate.go.txt paths="./api/..."

.PHONY: install
install: manifests ## install the CRD into the cluster of the current kubeconfig
	$(KUBECTL) apply --server-side -k config/crd

.PHONY: deploy
deploy: manifests ## deploy the operator (image IMG) into the cluster of the current kubeconfig
	@# A throwaway overlay sets the manager's image, so the tree stays clean (kubectl has no
	@# `kustomize edit`); a patch rather than `images:` because IMG carries its own tag.
	mkdir -p bin && tmp=$$(mktemp -d bin/deploy.XXXXXX) && trap 'rm -rf "$$tmp"' EXIT && \
	printf '%s\n' 'apiVersion: kustomize.config.k8s.io/v1beta1' 'kind: Kustomization' \
	  'resources:' '- ../../config/default' 'patches:' \
	  '- target: {kind: Deployment, labelSelector: control-plane=controller-manager}' \
	  '  patch: |-' '    - op: replace' '      path: /spec/template/spec/containers/0/image' \
	  '      value: $(IMG)' > "$$tmp/kustomization.yaml" && \
	$(KUBECTL) apply --server-side -k "$$tmp"

.PHONY: docker-build
docker-build: ## build the operator image IMG (manager and tradingd; the runtime default image is IMG itself)
	$(CONTAINER_TOOL) build --build-arg IMG=$(IMG) --build-arg VERSION=$(VERSION) -t $(IMG) .

.PHONY: help
help: ## this list
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
