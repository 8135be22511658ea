# Boilerhouse: `make run` starts the whole system locally, `make test` runs every test.
SHELL := /bin/bash
MODULES := messages pkg services tools loadtest
# The same cache as tools/controlplane/install.sh and the dev stack (Go's os.UserCacheDir).
CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/boilerhouse
CONTROLLER_GEN_VERSION := v0.23.0
CONTROLLER_GEN := $(CACHE)/bin/controller-gen-$(CONTROLLER_GEN_VERSION)
NATSCLI_VERSION := v0.5.0
NATSCLI := $(CACHE)/bin/nats-$(NATSCLI_VERSION)
STATICCHECK_VERSION := v0.8.2
STATICCHECK := $(CACHE)/bin/staticcheck-$(STATICCHECK_VERSION)
GO_TEST_FLAGS ?= -count=1 -timeout 30m

.PHONY: all build test unit vet lint tidy-check assets tools runc generate run bench images clean

all: build

build:
	go build $(MODULES:%=./%/...)

# assets: kube-apiserver, etcd and kubectl, built once per version into $(CACHE).
assets:
	@tools/controlplane/install.sh >/dev/null

# tools: controller-gen (code generation) and the nats CLI (README commands, e2e test).
tools: $(CONTROLLER_GEN) $(NATSCLI)

$(CONTROLLER_GEN):
	@mkdir -p $(CACHE)/bin
	@tmp=$$(mktemp -d) && GOBIN=$$tmp go install sigs.k8s.io/controller-tools/cmd/controller-gen@$(CONTROLLER_GEN_VERSION) && mv $$tmp/controller-gen $@ && rmdir $$tmp

$(NATSCLI):
	@mkdir -p $(CACHE)/bin
	@echo "installing the nats CLI $(NATSCLI_VERSION) (about a minute the first time)"
	@tmp=$$(mktemp -d) && GOBIN=$$tmp go install github.com/nats-io/natscli/nats@$(NATSCLI_VERSION) && mv $$tmp/nats $@ && rmdir $$tmp

$(STATICCHECK):
	@mkdir -p $(CACHE)/bin
	@tmp=$$(mktemp -d) && GOBIN=$$tmp go install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) && mv $$tmp/staticcheck $@ && rmdir $$tmp

# runc: the OCI runtime that tools/deploycheck runs the services' images with (as root), from
# Debian's packages.
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
runc:
	@command -v runc >/dev/null || { echo "installing runc (Debian's package)"; \
		$(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null || \
		{ $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq runc >/dev/null; }; }

generate: $(CONTROLLER_GEN)
	cd pkg && $(CONTROLLER_GEN) object paths=./api/... crd:crdVersions=v1 paths=./api/... output:crd:artifacts:config=../deploy/crds

vet:
	go vet $(MODULES:%=./%/...)

# lint: gofmt, and staticcheck (deprecated APIs, dead code, suspicious expressions) over every module.
lint: $(STATICCHECK)
	@unformatted=$$(gofmt -l $(MODULES)); if [ -n "$$unformatted" ]; then echo "not gofmt-ed: $$unformatted"; exit 1; fi
	$(STATICCHECK) $(MODULES:%=./%/...)

# Every module must build and tidy on its own, outside the workspace.
tidy-check:
	@for m in $(MODULES); do (cd $$m && GOWORK=off go mod tidy -diff >/dev/null) || { echo "$$m: go.mod/go.sum not tidy: run (cd $$m && GOWORK=off go mod tidy)"; exit 1; }; done

test: assets tools runc tidy-check vet lint
	CONTROLLER_GEN=$(CONTROLLER_GEN) NATS_CLI=$(NATSCLI) KUBEBUILDER_ASSETS=$$(tools/controlplane/install.sh) \
		go test $(GO_TEST_FLAGS) $(MODULES:%=./%/...)

# unit: the tests that need neither the control plane nor controller-gen.
unit:
	go test $(GO_TEST_FLAGS) ./messages/... ./pkg/natsx/...

# images: the services' container images, without a container engine, into one tarball
# (docker load / kind load image-archive); IMAGES_FLAGS=-push=REGISTRY pushes them as well.
images:
	@mkdir -p .devstack
	go run ./tools/cmd/images -out .devstack/images.tar $(IMAGES_FLAGS)

# run: the whole system on the embedded default (Ctrl-C stops it).
run: assets tools
	@mkdir -p .devstack
	go build -o .devstack/devstack ./tools/cmd/devstack
	./.devstack/devstack

# bench: the standard load scenario against a fresh dev stack; figures go to docs/benchmarks.md.
bench: assets tools
	loadtest/bench.sh

# bench-idle: idle release lag of 10,000 claims on a fresh dev stack (issue 5); figures go to
# their own marked section of docs/benchmarks.md. N, RATE, TIMEOUT, POOL, RUNS: see the script.
.PHONY: bench-idle
bench-idle: assets
	loadtest/idle.sh

clean:
	rm -rf .devstack
