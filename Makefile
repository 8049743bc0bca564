# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv here first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cuttree-installed
ARGS ?=

.PHONY: setup test demo lint bench-zoo bench-speed bench-recovery clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this project is tested with
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/python -m mypy src/cuttree bench
	$(BIN)/python -m pytest -q

demo: $(STAMP)
	$(BIN)/cuttree demo $(ARGS)

lint: $(STAMP)
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/python -m ruff format --check src tests bench

bench-zoo: $(STAMP)
	$(BIN)/python bench/zoo.py $(ARGS)

# the bench extra (torch-pruning, the comparison tool) on top of the editable install
bench-speed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/engine_speed.py $(ARGS)

bench-recovery: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/recovery.py $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
