# One command from clone to report: `make report`; tests (ruff, then pytest): `make test`; benchmarks: `make bench`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
STUDY ?= studies/default.yml
BOOK_ALL ?=
JOBS ?= 2
export CONCEPTSIM_ROOT := $(CURDIR)
export MPLBACKEND := Agg
# nothing writes into $HOME: tool config and caches live in the project's git-ignored .cache/
CACHE := $(CURDIR)/.cache
export MPLCONFIGDIR := $(CACHE)/matplotlib
export YOLO_CONFIG_DIR := $(CACHE)/ultralytics
export JUPYTER_CONFIG_DIR := $(CACHE)/jupyter/config
export JUPYTER_DATA_DIR := $(CACHE)/jupyter/data
export JUPYTER_RUNTIME_DIR := $(CACHE)/jupyter/runtime
export IPYTHONDIR := $(CACHE)/ipython
export TORCH_HOME := $(CACHE)/torch
export YOLO_OFFLINE := 1

.PHONY: setup system-tools report study smoke book test bench lab clean-results

$(STAMP): requirements.txt pyproject.toml
	mkdir -p $(CACHE)/ipython $(CACHE)/matplotlib $(CACHE)/jupyter
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (conceptsim)" >/dev/null
	touch $(STAMP)

# npm, chromium and chromedriver: installed with apt-get when missing and run as root; otherwise the script
# stops naming the one command to run
system-tools:
	@bash scripts/system-tools.sh

# idempotent: the install is stamped; weights, emoji packages and MathJax are verified by hash and fetched only if absent
setup: system-tools $(STAMP)
	$(VENV)/bin/conceptsim models fetch >/dev/null
	$(VENV)/bin/conceptsim data fetch-icons >/dev/null
	$(PY) -m conceptsim.book.assets >/dev/null
	@echo "setup complete: $(VENV)"

study: setup
	$(VENV)/bin/conceptsim run $(STUDY) --jobs $(JOBS)

smoke: setup
	$(VENV)/bin/conceptsim run $(STUDY) --smoke --jobs $(JOBS)

# the book lists complete studies; BOOK_ALL=1 adds smoke and incomplete studies as rehearsals
book: setup
	CONCEPTSIM_BOOK_ALL=$(BOOK_ALL) $(PY) -m conceptsim.book.toc >/dev/null
	$(VENV)/bin/jupyter-book build . --toc book/_generated/_toc.yml -W -n --keep-going
	@echo "$(CURDIR)/_build/html/index.html"

report: study book

# lint failures fail the suite (rules in pyproject.toml)
test: setup
	$(VENV)/bin/ruff check .
	$(PY) -m pytest

bench: setup
	$(PY) benchmarks/run.py

# JupyterLab on the project's kernel, opening the results explorer (notebooks/explore.ipynb)
lab: setup
	$(VENV)/bin/jupyter lab --ServerApp.root_dir=$(CURDIR) --KernelManager.transport_encryption=auto notebooks/explore.ipynb

clean-results:
	rm -rf results book/results book/_generated _build
