# Hodei Makefile. `make run` starts a local 3-node cluster; `make test` runs the tests.
GO ?= go
PROTOC_GEN_GO_VERSION ?= v1.36.12
PROTOC_GEN_GO_GRPC_VERSION ?= v1.6.0
GOBIN := $(shell $(GO) env GOPATH)/bin
PKGS := ./...
TEST_TIMEOUT ?= 20m

.PHONY: image all build test race bench fuzz proto proto-tools check run chaos-smoke compose-test prometheus-check clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -o bin/hodei ./cmd/hodei

run: build
	./bin/hodei dev

test:
	$(GO) test -race -timeout $(TEST_TIMEOUT) -count=1 $(PKGS)

race: test

bench:
	$(GO) test -run '^$$' -bench . -benchmem $(PKGS)

fuzz:
	$(GO) test -run '^$$' -fuzz FuzzApply -fuzztime 30s ./fsm
	$(GO) test -run '^$$' -fuzz FuzzWorkerMessage -fuzztime 30s ./transport
	$(GO) test -run '^$$' -fuzz FuzzCronSpec -fuzztime 30s ./fsm/cron
	$(GO) test -run '^$$' -fuzz FuzzConstraint -fuzztime 30s ./fsm
	$(GO) test -run '^$$' -fuzz FuzzRequestRecord -fuzztime 30s ./fsm
	$(GO) test -run '^$$' -fuzz FuzzParseWatchCursor -fuzztime 30s ./transport
	$(GO) test -run '^$$' -fuzz FuzzDecodeMeta -fuzztime 30s ./cluster/gossip
	$(GO) test -run '^$$' -fuzz FuzzDecodeLog -fuzztime 30s ./cluster/logdb
	$(GO) test -run '^$$' -fuzz FuzzDecodeCompile -fuzztime 30s ./fsm/pipeline
	$(GO) test -run '^$$' -fuzz FuzzParseToken -fuzztime 30s ./fsm

proto-tools:
	$(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	$(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

proto: proto-tools
	cd proto && PATH="$(GOBIN):$$PATH" protoc -I . \
		--go_out=. --go_opt=module=github.com/hodei-io/hodei/proto \
		--go-grpc_out=. --go-grpc_opt=module=github.com/hodei-io/hodei/proto \
		$$(find . -name '*.proto' | sort)

check:
	./scripts/check.sh

prometheus-check:
	./scripts/prometheus-check.sh

compose-test:
	./scripts/compose-test.sh 60

chaos-smoke: build
	./bin/hodei chaos run --nodes 3 --duration 2m --faults mixed --seed 1 --schedules 3 --binary ./bin/hodei --out chaos-report

clean:
	rm -rf bin chaos-report

image:
	CGO_ENABLED=0 $(GO) build -o deploy/hodei ./cmd/hodei
	docker build -t hodei:dev deploy
