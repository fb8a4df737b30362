# bayesprune: two entry points for a fresh machine (see README.md)
#   make demo   -- venv, install, Fashion-MNIST, unit gates on LeNet-5 (dead units cut out while
#                  training) -> extracted network, reloaded from disk -> diagnostics -> report.html
#   make test   -- venv, install with dev extras, run the test suite
#   make wheel-check -- build the wheel and install it into a fresh venv (not part of test)
#
# pyproject.toml declares compatible ranges (what a library user gets); every install here
# adds the exact pins of constraints.txt.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= /usr/share/datasets/fashion-mnist
DEMO_EPOCHS ?= 3
DEMO_OUT    ?= runs/demo
DEMO_DRAWS  ?= 30
DEMO_EXAMPLES ?= 2000
PIP    := $(BIN)/python -m pip install -q -c constraints.txt
WHEEL_VENV ?= /tmp/bayesprune-wheel-check
WHEEL_DIST ?= /tmp/bayesprune-wheel-dist

.PHONY: demo test install dev data lint format bench wheel-check clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(PIP) -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml constraints.txt $(VENV)/.installed
	$(PIP) -e '.[dev]'
	touch $@

install: $(VENV)/.installed
dev: $(VENV)/.installed-dev

# Fashion-MNIST: $BAYESPRUNE_DATA, or the Debian package dataset-fashion-mnist (installed
# here when apt is available), or torchvision's download when the network allows.
data:
	@if [ -n "$$BAYESPRUNE_DATA" ] || [ -f $(DATA)/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null && echo "Fashion-MNIST: installed $(DATA)"; \
	else \
	  echo "Fashion-MNIST not found: the loader will try torchvision's download (or set BAYESPRUNE_DATA)"; \
	fi

demo: install data
	rm -rf $(DEMO_OUT)
	$(BIN)/bayesprune fit models/gates-lenet5.toml --epochs $(DEMO_EPOCHS) --out $(DEMO_OUT)
	$(BIN)/bayesprune extract $(DEMO_OUT)
	$(BIN)/bayesprune report $(DEMO_OUT) --num-samples $(DEMO_DRAWS) --max-examples $(DEMO_EXAMPLES)

test: dev
	$(BIN)/python -m pytest -n 2 -q

lint: dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: dev
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

bench: install data
	$(BIN)/python benchmarks/fit_overhead.py
	$(BIN)/python benchmarks/halo_vs_magnitude.py

# The wheel a user would install: built from a clean tree, installed into a fresh venv
# (with the pins), imported from outside the source tree, its CLI run.
wheel-check: dev
	rm -rf $(WHEEL_DIST) $(WHEEL_VENV)
	$(BIN)/python -m build --wheel --outdir $(WHEEL_DIST) .
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q -c constraints.txt $(WHEEL_DIST)/*.whl
	cd $(WHEEL_VENV) && bin/python -c "import bayesprune, sys; \
	  assert bayesprune.__file__.startswith(sys.prefix), bayesprune.__file__; \
	  print('bayesprune', bayesprune.__version__, 'from', bayesprune.__file__)"
	$(WHEEL_VENV)/bin/bayesprune --help > /dev/null && echo "wheel-check: ok"

clean:
	rm -rf runs .pytest_cache .ruff_cache
