# bayesprune: two entry points for a fresh machine (see README.md)
#   make demo   -- venv, install, Fashion-MNIST, unit gates on LeNet-5 (dead units cut out while
#                  training) -> extracted network, reloaded from disk -> diagnostics -> report.html
#   make test   -- venv, install with dev extras, run the test suite

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DATA   ?= /usr/share/datasets/fashion-mnist
DEMO_EPOCHS ?= 3
DEMO_OUT    ?= runs/demo
DEMO_DRAWS  ?= 30
DEMO_EXAMPLES ?= 2000

.PHONY: demo test install dev data lint format bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[dev]'
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

clean:
	rm -rf runs .pytest_cache .ruff_cache
