# rtlearn: two commands do everything, each setting itself up on a fresh machine.
#   make book   build the HTML book into _build/html from the committed notebooks
#               (make book EXECUTE=1 first re-executes every chapter in the current profile;
#                make book STUDENT=1 builds the student edition, without solutions)
#   make test   unit tests + nbval over every chapter notebook (quick profile)
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU-only machine should install the CPU build of torch first, e.g. TORCH_SPEC=torch==2.13.0
# (from the PyTorch CPU index elsewhere). An existing torch in the venv is kept.
TORCH_SPEC ?= torch>=2.1,<3
PIP_FLAGS ?= -q --disable-pip-version-check
PROFILE ?= quick
EXECUTE ?=
NOTEBOOKS := $(shell awk '/file: *book\//{sub(/.*file: */,""); print}' _toc.yml | while read f; do [ -f "$$f.ipynb" ] && echo "$$f.ipynb"; done)
STAMP := $(VENV)/.rtlearn-installed

.PHONY: help venv book execute test unit nbval dist clean

help:
	@echo "make book   - build the HTML book into _build/html (EXECUTE=1 re-executes the notebooks, PROFILE=$(PROFILE);"
	@echo "              STUDENT=1 builds the student edition, without solutions, into _build/student)"
	@echo "make test   - unit tests and nbval over every chapter (quick profile)"
	@echo "make venv   - only create/refresh the virtualenv $(VENV)"
	@echo "make dist   - build the sdist and the wheel into $(DIST) (tests/test_wheel.py checks them)"

$(STAMP): requirements.txt pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || { echo "installing $(TORCH_SPEC)"; $(PY) -m pip install $(PIP_FLAGS) "$(TORCH_SPEC)" 2>&1 | grep -v "^WARNING: Location" || true; $(PY) -c "import torch"; }
	@echo "installing requirements.txt into $(VENV)"
	@$(PY) -m pip install $(PIP_FLAGS) -r requirements.txt 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -m pip install $(PIP_FLAGS) --no-deps -e . 2>&1 | grep -v "^WARNING: Location" || true
	@$(PY) -c "import rtlearn, torch, jupyter_book, nbval; print('environment ready: torch', torch.__version__)"
	@touch $@

venv: $(STAMP)

execute: $(STAMP)
	@for nb in $(NOTEBOOKS); do \
	  echo "executing $$nb (RTLEARN_PROFILE=$(PROFILE))"; \
	  RTLEARN_PROFILE=$(PROFILE) $(VENV)/bin/jupyter nbconvert --to notebook --execute --inplace \
	    --ExecutePreprocessor.timeout=7200 "$$nb"; \
	done

# STUDENT=1: the student edition (every exercise, no solution) into _build/student/_build/html.
BOOK_OUT := $(if $(filter 1,$(STUDENT)),_build/student,.)
BOOK_LOG := $(if $(filter 1,$(STUDENT)),_build/student.log,_build.log)

book: $(STAMP) $(if $(EXECUTE),execute)
	@rm -rf $(BOOK_OUT)/_build/.doctrees $(BOOK_OUT)/_build/html && mkdir -p $(BOOK_OUT)
	@start=$$(date +%s); \
	RTLEARN_STUDENT=$(if $(filter 1,$(STUDENT)),1,0) \
	  $(VENV)/bin/jupyter-book build . --path-output $(BOOK_OUT) --keep-going 2>&1 | tee $(BOOK_LOG); \
	n=$$(grep -cE "WARNING|ERROR" $(BOOK_LOG) || true); \
	echo "$(if $(filter 1,$(STUDENT)),student edition,book) built in $$(( $$(date +%s) - start )) s with $$n Sphinx warning(s): $(BOOK_OUT)/_build/html/index.html"; \
	test -f $(BOOK_OUT)/_build/html/index.html; test "$$n" -eq 0 || { grep -E "WARNING|ERROR" $(BOOK_LOG); exit 1; }

unit: $(STAMP)
	RTLEARN_PROFILE=quick $(PY) -m pytest tests -q

nbval: $(STAMP)
	RTLEARN_PROFILE=quick $(PY) -m pytest --nbval-lax --nbval-current-env -q $(NOTEBOOKS)

test: $(STAMP)
	RTLEARN_PROFILE=quick $(PY) -m pytest tests $(NOTEBOOKS) --nbval-lax --nbval-current-env -p no:cacheprovider --durations=15

# The sdist from the work tree, then the wheel from the unpacked sdist, as `python -m build` does
# (setuptools from the venv, no network, nothing written into the work tree but rtlearn.egg-info).
DIST ?= _build/dist
dist: $(STAMP)
	@rm -rf $(DIST) && mkdir -p $(DIST)/src
	@$(PY) -c "import sys; from setuptools import build_meta as b; b.build_sdist(sys.argv[1])" $(DIST) > $(DIST)/build.log 2>&1 \
	  || { cat $(DIST)/build.log; exit 1; }
	@tar xzf $(DIST)/rtlearn-*.tar.gz -C $(DIST)/src
	@$(PY) -m pip wheel $(PIP_FLAGS) --no-deps --no-build-isolation --no-cache-dir -w $(DIST) $(DIST)/src/rtlearn-* >> $(DIST)/build.log 2>&1 \
	  || { cat $(DIST)/build.log; exit 1; }
	@rm -rf $(DIST)/src && ls -l $(DIST)/rtlearn-*

clean:
	rm -rf _build _build.log .pytest_cache
