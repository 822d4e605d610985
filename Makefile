# Two entry points: `make demo` (the main job) and `make test` (the test suite).
# Both create .venv and install everything on a fresh machine.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
DEMO   := demo_out
SAMPLE := ../shared/data/coco_panoptic_sample

.PHONY: install test test-all demo clean

$(VENV)/.installed: pyproject.toml setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[dev]"
	# panopticapi's PyPI packaging pins numpy<2, which it does not need: install it without deps.
	$(PY) -m pip install -q --no-deps panopticapi-lite
	touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -m "not slow and not gpu and not tensorrt" -p no:cacheprovider

test-all: install
	$(PY) -m pytest -q -p no:cacheprovider

demo: install
	$(PY) -m pfcn.tools.demo --out $(DEMO) --sample $(SAMPLE)

clean:
	rm -rf $(VENV) $(DEMO) build *.egg-info
