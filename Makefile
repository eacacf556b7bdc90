# Two commands on a fresh machine: `make demo` and `make test` (each installs first);
# `make test-all` is what CI runs.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and torchvision are pinned to the builds on this machine's disk; pyproject.toml
# declares the range any other machine may use.
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
STAMP := $(VENV)/.installed
# ffcv builds against these Debian packages.
FFCV_APT := libopencv-dev libturbojpeg0-dev pkg-config

.PHONY: install ffcv-deps browser demo test test-all bench gpu-check clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(MAKE) ffcv-deps
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q $(TORCH_PINS)
	$(BIN)/python -m pip install -q -e ".[test,dali,ffcv]"
	touch $@

ffcv-deps:
	@if ! pkg-config --exists opencv4 libturbojpeg 2>/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(FFCV_APT); \
	  else echo "ffcv needs OpenCV and libjpeg-turbo; as root run: apt-get install -y $(FFCV_APT)"; exit 1; fi; \
	fi

# The report's page test renders it in Debian's headless chromium.
browser:
	@if ! command -v chromium >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	  else echo "the report's page test needs chromium; as root run: apt-get install -y chromium"; exit 1; fi; \
	fi

# An interrupted demo continues where it stopped; a finished one says so (rm -r runs/demo to start over).
demo: install
	@$(BIN)/accelerate launch --config_file launch/one_process.yaml -q -m gssl_fast.train recipes/demo.toml \
		--resume auto; status=$$?; echo "the commands of the README run inside .venv: . $(BIN)/activate"; exit $$status

# The fast loop: everything but the tests marked slow (multi-process and kill-and-resume
# runs, whole recipes, bench smoke runs), with the 15 slowest named.
test: install
	$(BIN)/python -m pytest -q -m "not slow" --durations=15

# Everything (what CI runs): the fast loop and the slow tests, the report's page in a browser.
test-all: install browser
	$(BIN)/python -m pytest -q --durations=25

# One script per measurement (bench/), each writing bench/out/<name>.json.
BENCHES := transform loaders train_step method_step kornia_ops scaling dali_loader ffcv_loader fixmatch_loader \
	simclr_loader guided_plan crash_points decode_cache stream uncertainty
bench: install
	@for b in $(BENCHES); do echo "python -m bench.$$b"; $(BIN)/python -m bench.$$b --json bench/out/$$b.json || exit 1; done

# CUDA-only tests and a short GPU benchmark, JSON into OUT (exits 3 without CUDA).
OUT ?= bench/out/gpu
gpu-check: install
	$(BIN)/python -m bench.gpu_check --out $(OUT)

clean:
	rm -rf $(VENV) runs build *.egg-info
