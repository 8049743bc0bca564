# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv here first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cuttree-installed
ARGS ?=

.PHONY: chromium setup test test-slow test-keras-tf test-keras-jax demo lint bench-zoo bench-speed bench-recovery bench-keras clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	# torch/torchvision first, pinned to the builds this project is tested with
	$(BIN)/python -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

# headless Chromium renders the HTML report in the tests (Debian's package; skipped with a reason
# where it cannot be installed: not root, or no apt)
chromium:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1; } || \
	  echo "note: chromium not installed; the browser test of the HTML report will be skipped"

test: $(STAMP) chromium
	$(BIN)/python -m ruff check src tests bench
	$(BIN)/python -m ruff format --check src tests bench
	$(BIN)/python -m mypy src/cuttree bench
	$(BIN)/python -m pytest -q

# the reliability suite at full size: ≥ 10,000 generated bad inputs (the fast suite runs half)
test-slow: $(STAMP)
	CUTTREE_FUZZ=2 $(BIN)/python -m pytest -q -s -p no:logging tests/reliability

# the Keras tests again on the TensorFlow backend (tensorflow-cpu from PyPI, not in CI)
test-keras-tf: $(STAMP)
	$(BIN)/python -m pip install --quiet tensorflow-cpu
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q tests/test_keras.py tests/test_keras_grouped.py tests/test_keras_sensitivity.py src/cuttree/keras.py

# and on JAX (jax from PyPI, not in CI)
test-keras-jax: $(STAMP)
	$(BIN)/python -m pip install --quiet jax
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q tests/test_keras.py tests/test_keras_grouped.py tests/test_keras_sensitivity.py src/cuttree/keras.py

bench-keras: $(STAMP)
	KERAS_BACKEND=torch $(BIN)/python bench/keras_zoo.py $(ARGS)

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
