# make demo: set up .venv from scratch when missing and run lipbound on the bundled example network.
# make test: set up .venv from scratch when missing and run the whole test suite.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# the CPU build of torch first (it lies on this disk); the project's range torch>=2.2 accepts it
	$(PY) -m pip install --quiet "torch==2.13.0"
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lipbound demo

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info
