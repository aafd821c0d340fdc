# kvd: a replicated, sharded key-value store.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# Packages where goroutines meet run under the race detector.
RACE_PKGS := ./backup/... ./store/... ./replication/... ./txn/... ./httpapi/... ./server/... ./client/... ./embed/... ./examples/... ./internal/...
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# apt-get as root; through sudo otherwise. Without a browser its test is skipped.
SUDO       := $(shell [ "$$(id -u)" = 0 ] || echo sudo -n)
NO_BROWSER  = $(shell command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || echo KVD_NO_BROWSER=1)

.PHONY: all build run test test-short bench compare jepsen soak mutants lint fmt clean browser screenshot

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/kvd ./cmd/kvd
	$(GO) build -o $(BIN)/kvcli ./cmd/kvcli
	$(GO) build -o $(BIN)/kvbench ./cmd/kvbench

## run: a single-node kvd on 127.0.0.1:7070 with data in ./kvd-data
run: build
	./$(BIN)/kvd

## test: every test; -race on the concurrent packages; a short fault-injection run;
## the console in a headless browser (Debian's chromium, installed by `make browser`)
test: browser
	$(GO) vet ./...
	$(GO) test -race -timeout 15m $(RACE_PKGS) .
	$(NO_BROWSER) $(GO) test -count=1 -timeout 15m ./console/... ./shell/... ./cmd/... ./jepsen/...

## browser: Debian's chromium for the console's browser test, if it is not there
## (a machine that cannot install it runs the other tests and says so)
browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { echo "installing chromium from Debian's packages for the console's browser test"; \
	    $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || \
	    { $(SUDO) apt-get update -q >/dev/null 2>&1 && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	    echo "WARNING: could not install chromium: the console's browser test is skipped"; }

## screenshot: docs/console.png, taken by the console's browser test
screenshot: browser
	KVD_SCREENSHOT=$(CURDIR)/docs/console.png $(GO) test -count=1 -run TestConsole_InAHeadlessBrowser ./console/

test-short:
	$(GO) test -short -timeout 5m ./...

## bench: micro-benchmarks of the hot paths (command encoding, batch apply,
## router pick, HTTP handler); in-process clusters (embedded vs network,
## 1 vs 3 groups, leader vs follower reads, txns); then a short kvbench run
## against a real 3-node cluster. Figures to compare are the ratios.
bench: build
	$(GO) test -run '^$$' -bench . -benchmem -timeout 10m ./store/ ./client/ .
	$(GO) test -run '^$$' -bench 'BenchmarkHandler' -benchmem -benchtime 5000x -timeout 10m ./server/
	$(GO) test -run '^$$' -bench 'Benchmark(Put|PutGroups|Get|Txn|EmbeddedVsNetwork)$$' -benchtime 3000x -timeout 20m ./embed/ ./server/
	BIN=$(BIN) ./scripts/bench-e2e.sh

## jepsen: every workload under mixed faults on a real cluster; reports in jepsen-results/
jepsen:
	$(GO) run ./jepsen/cmd/kvd-jepsen -workload all -nemesis mixed -time 60s -out jepsen-results

## soak: every workload at once on one 3-node, 3-group cluster under mixed faults
## for DURATION (default 30m), each node's memory, goroutines, descriptors and
## disk sampled and judged bounded; reports and plots in jepsen-results/
soak:
	$(GO) run ./jepsen/cmd/kvd-jepsen -soak -nemesis mixed -nodes 3 -groups 3 -time $(or $(DURATION),30m) -out jepsen-results

## mutants: build kvd with each planted bug (internal/failpoint) and run the
## workload and nemesis that must catch it until one run is invalid (at most
## 3 or 4 runs each, or ATTEMPTS); prints a table, fails if a bug got through
mutants:
	$(GO) run ./jepsen/cmd/kvd-mutants $(if $(ATTEMPTS),-attempts $(ATTEMPTS)) -out jepsen-results/mutants

## compare: side by side with a 3-member etcd (needs ../shared/bench)
compare:
	../shared/bench/compare.sh quick

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

fmt:
	gofmt -w .

clean:
	rm -rf $(BIN) kvd-data bench-results jepsen-results
