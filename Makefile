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

.PHONY: install demo test bench clean java chromium

# torch first, from the CPU wheel pinned in constraints.txt, so nothing pulls a CUDA build.
$(STAMP): requirements.txt requirements-dev.txt constraints.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -c constraints.txt torch
	$(PY) -m pip install -q -c constraints.txt -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install -q -c constraints.txt --no-deps --no-build-isolation -e .
	touch $(STAMP)

install: $(STAMP)

# Java runs pycocoevalcap's tokenizer and METEOR; Debian's chromium runs the Space's
# browser tests (never `playwright install`, which downloads a browser).
java:
	@command -v java >/dev/null || { apt-get update -qq && apt-get install -y -qq default-jre-headless >/dev/null; }

chromium:
	@command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium >/dev/null; }

demo: install java
	SERVE=$(SERVE) DEMO_DIR=$(DEMO_DIR) PY=$(PY) bash scripts/demo.sh

test: install java chromium
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest

bench: install java
	HF_HUB_OFFLINE=1 $(PY) bench/run_all.py

clean:
	rm -rf $(DEMO_DIR) .pytest_cache
