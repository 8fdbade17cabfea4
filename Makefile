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

# one BLAS/OpenMP thread unless told otherwise: on a shared 2-core machine two spinning threads per
# process made torch's linear algebra 10-30x slower (measured); neither target needs them
demo: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(VENV)/bin/lipbound demo

test: $(STAMP)
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1} $(PY) -m pytest

clean:
	rm -rf $(VENV) build dist src/*.egg-info
