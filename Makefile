# `make test`: set up .venv (once) and run the suite under every backend.
# `make sentiment`: set up .venv (once) and train the sentiment recipe.
# `make ner`: set up .venv (once) and train the NER recipe.
PYTHON ?= python3
VENV ?= .venv
# torch first: the run-once tests (the recipes' end-to-end runs among
# them) then run on the recipes' default backend, as `make sentiment` does.
BACKENDS ?= torch jax tensorflow
PYTEST_ARGS ?=
# Test processes per backend (pytest-xdist); a test file stays in one of
# them, so its module fixtures are built once.
TEST_WORKERS ?= 2
STAMP := $(VENV)/.installed
# No pip cache: a fresh setup would otherwise hold every wheel twice on disk.
PIP := $(VENV)/bin/python -m pip install -q --no-cache-dir

.PHONY: setup test sentiment ner

setup: $(STAMP)

# torch is installed first and pinned, so nothing resolves a CUDA build.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e ".[test]"
	# seqeval, the NER scorer's test oracle, ships only an sdist whose
	# isolated build can fail; build it against the venv's setuptools.
	$(PIP) setuptools setuptools-scm
	$(PIP) --no-build-isolation seqeval==1.2.2
	touch $@

# pytest's exit code 5 means "no tests collected": not a failure here.
# Tests marked `once` (no backend needed, or every backend covered in fresh
# processes) run under the first backend only.
test: $(STAMP)
	@failed=""; first=1; for backend in $(BACKENDS); do \
	  echo "=== KERAS_BACKEND=$$backend ==="; \
	  if [ $$first = 1 ]; then select=""; else select="not once"; fi; \
	  KERAS_BACKEND=$$backend $(VENV)/bin/python -m pytest -m "$$select" \
	    -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); \
	  rc=$$?; first=0; \
	  if [ $$rc -ne 0 ] && [ $$rc -ne 5 ]; then failed="$$failed $$backend"; fi; \
	done; \
	if [ -n "$$failed" ]; then echo "FAILED on:$$failed"; exit 1; fi; \
	echo "all backends passed: $(BACKENDS)"

sentiment: $(STAMP)
	$(VENV)/bin/python recipes/sentiment.py

ner: $(STAMP)
	$(VENV)/bin/python recipes/ner.py
