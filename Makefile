# kvd: a replicated, sharded key-value store.
GO        ?= go
BIN       := bin
VERSION   ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X main.version=$(VERSION)
# Packages where goroutines meet run under the race detector.
RACE_PKGS := ./store/... ./replication/... ./httpapi/... ./server/... ./client/... ./internal/...
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

.PHONY: all build run test test-short bench compare lint fmt clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/kvd ./cmd/kvd

## run: a single-node kvd on 127.0.0.1:7070 with data in ./kvd-data
run: build
	./$(BIN)/kvd

## test: every test; -race on the concurrent packages
test:
	$(GO) vet ./...
	$(GO) test -race -timeout 15m $(RACE_PKGS) .
	$(GO) test -timeout 10m ./cmd/...

test-short:
	$(GO) test -short -timeout 5m ./...

## bench: PUT and GET throughput and latency of a 3-replica group on loopback
bench:
	$(GO) test -run '^$$' -bench . -benchtime 3000x -timeout 20m ./server/

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
	rm -rf $(BIN) kvd-data bench-results
