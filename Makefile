# Two commands for a fresh machine: `make test` and `make demo`.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := espeak-ng sox ffmpeg prometheus prometheus-pushgateway chromium
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: test demo lint format apt venv bench

$(VENV)/.installed: requirements.txt constraints.txt
	python3 -m venv $(VENV)
	# torch first and pinned: an unpinned torch pulls a multi-GB CUDA build; never torchvision.
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -r requirements.txt -c constraints.txt
	touch $@

venv: $(VENV)/.installed

apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -q >/dev/null && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing >/dev/null; \
	fi

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

test: apt venv lint
	$(PY) -m pytest

demo: apt venv
	$(PY) -m jobs.demo --output out/demo

bench: apt venv
	$(PY) -m jobs.bench
