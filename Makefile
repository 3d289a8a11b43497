# modelgate developer entry points. `make help` lists them.
SHELL := /bin/bash
.DEFAULT_GOAL := help

VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
GENERATED := protos/modelgate/v1/gateway_pb2.py protos/tfs/tensorflow_serving/apis/prediction_service_pb2_grpc.py
PYTEST_ARGS ?=
UP_ARGS ?=
SCALE_ARGS ?=

# $(call debian_package,FILE,PACKAGE): install Debian's PACKAGE unless FILE exists (as root;
# otherwise say how and fail).
define debian_package
	@if [ ! -e $(1) ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's $(2) package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(2) >/dev/null; \
	  else \
	    echo "$(2) is missing; install it with: sudo apt-get update && sudo apt-get install -y $(2)"; \
	    exit 1; \
	  fi; \
	fi
endef

.PHONY: help setup generate lint test demo up bench bench-scale bench-autoscale clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) $(GENERATED) ## create .venv, install modelgate[dev], ZooKeeper, HAProxy, Java/Node client tools, Chromium + playwright-core (idempotent)
	$(call debian_package,/usr/share/java/zookeeper.jar,zookeeper)
	$(call debian_package,/usr/sbin/haproxy,haproxy)
	$(call debian_package,/usr/bin/redis-server,redis-server)
	@bash examples/clients/setup.sh
	$(call debian_package,/usr/bin/chromium,chromium)
	@cd tests/manager_api/ui && { [ node_modules/.modelgate-npm-ci -nt package-lock.json ] || \
	  { npm ci --no-audit --no-fund --loglevel=error && touch node_modules/.modelgate-npm-ci; }; }

$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -e '.[dev]'
	@touch $@

$(GENERATED): $(STAMP) protos/modelgate/v1/gateway.proto protos/generate.py
	$(PY) -m protos.generate

generate: $(STAMP) ## regenerate the Python protobuf modules under protos/ (for the editable install; a wheel build generates its own)
	$(PY) -m protos.generate

lint: setup ## ruff and mypy
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: setup ## run the whole test suite (real ZooKeeper and Triton, started by the tests)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

demo: setup ## the one-machine stack with the digits example, end to end
	$(PY) deploy/local/demo.py

up: setup ## start ZooKeeper, Triton x2 + worker agents, gateway and manager locally
	$(PY) deploy/local/stack.py $(UP_ARGS)

bench: setup ## gateway vs direct-to-Triton benchmark; writes bench/results/latest.json
	$(PY) -m bench
	$(PY) -m bench.workers

bench-autoscale: setup ## autoscaling (load ramp -> replicas, plot), cold start from zero, per-model isolation; writes bench/results/autoscale.{json,png} and isolation.json
	$(PY) -m bench.autoscale
	$(PY) -m bench.isolation

bench-scale: setup ## fleet-scale control-plane benchmark (1k/3k/10k models); writes bench/results/scale.json
	$(PY) -m bench.scale $(SCALE_ARGS)

clean: ## remove the virtualenv, generated code and local state
	rm -rf $(VENV) .run protos/tfs protos/descriptors build dist *.egg-info
	find protos -name '*_pb2*.py*' -delete
