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
vet: ## go vet and a gofmt check
	@unformatted=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$unformatted" ]; then echo "gofmt needed: $$unformatted"; exit 1; fi
	$(GO) vet ./...

.PHONY: envtest-assets
envtest-assets: ## build kube-apiserver, etcd, kubectl and controller-gen from the Go module proxy (once)
	@hack/envtest-assets.sh >/dev/null

.PHONY: test
test: vet envtest-assets ## vet, then every test with the race detector against real PostgreSQL, Redis and kube-apiserver
	KUBEBUILDER_ASSETS=$$(hack/envtest-assets.sh) hack/services.sh $(GO) test $(TEST_FLAGS) ./...

.PHONY: build
build: ## build bin/tradingd (and bin/manager once the operator exists)
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/tradingd ./cmd/tradingd

.PHONY: run
run: build ## start tradingd with demo users on a local or throwaway database and print how to log in
	hack/services.sh hack/run.sh

.PHONY: bench
bench: build ## load-test tradingd against the local PostgreSQL, with baselines in the same run
	hack/services.sh $(GO) run ./hack/bench

.PHONY: help
help: ## this list
	@awk 'BEGIN {FS = ":.*##"} /^[a-zA-Z_-]+:.*##/ { printf "  %-16s %s\n", $$1, $$2 }' $(MAKEFILE_LIST)
