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

.PHONY: help setup generate lint test demo up bench clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

setup: $(STAMP) $(GENERATED) ## create .venv, install modelgate[dev], ZooKeeper, HAProxy, Java/Node client tools (idempotent)
	@if [ ! -f /usr/share/java/zookeeper.jar ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's zookeeper package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq zookeeper >/dev/null; \
	  else \
	    echo "ZooKeeper is missing; install it with: sudo apt-get update && sudo apt-get install -y zookeeper"; \
	    exit 1; \
	  fi; \
	fi
	@if ! command -v haproxy >/dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's haproxy package"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq haproxy >/dev/null; \
	  else \
	    echo "HAProxy is missing; install it with: sudo apt-get update && sudo apt-get install -y haproxy"; \
	    exit 1; \
	  fi; \
	fi
	@bash examples/clients/setup.sh

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

clean: ## remove the virtualenv, generated code and local state
	rm -rf $(VENV) .run protos/tfs protos/descriptors build dist *.egg-info
	find protos -name '*_pb2*.py*' -delete
