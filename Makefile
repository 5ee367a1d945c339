# frwatch — two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: test demo lint typecheck unit integration deps broker-fetch clean help

help:
	@echo "make demo   - local broker + worker + synthetic traffic; alerts stream to the terminal"
	@echo "make test   - lint, type-check and run every test (starts a real Kafka broker)"

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# Debian's kcat (a SOC analyst's Kafka reader), prometheus/promtool, and chromium (the
# headless browser that opens `frwatch replay --report` pages), used by the tests
deps:
	@missing=""; \
	command -v kcat >/dev/null || missing="$$missing kcat"; \
	command -v promtool >/dev/null || missing="$$missing prometheus"; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

broker-fetch:
	deploy/kafka/broker fetch

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP) deps
	$(BIN)/pytest -q tests -m "not integration"

integration: $(STAMP) deps broker-fetch
	$(BIN)/pytest -q tests -m integration

test: $(STAMP) deps broker-fetch lint typecheck
	$(BIN)/pytest -q tests

demo: $(STAMP) broker-fetch
	deploy/demo/run

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .demo deploy/kafka/.run
