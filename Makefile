# fastunlearn developer commands. `make demo` and `make test` work on a fresh machine:
# they create .venv, install what they need, build the extension and run.

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.fastunlearn-deps
BUILT  := $(VENV)/.fastunlearn-built
PYTEST_ARGS ?=
# The test suites run in TEST_WORKERS processes (pytest-xdist; each keeps torch's own thread
# count, waiting passively: OMP_WAIT_POLICY); TEST_WORKERS=0 runs them in this process.
TEST_WORKERS ?= 2
XDIST = $(shell [ "$(TEST_WORKERS)" != 0 ] && $(PY) -c "import xdist" 2>/dev/null && echo "-n $(TEST_WORKERS)")
TEST_ENV = OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE}

# CUDA_HOME: the nvcc that matches torch's CUDA (installed into the venv), else the system's.
CUDA_HOME_VENV = $(shell $(PY) -c "import os,sysconfig;p=os.path.join(sysconfig.get_paths()['purelib'],'nvidia','cu13');print(p if os.path.exists(os.path.join(p,'bin','nvcc')) else '')" 2>/dev/null)
BUILD_ENV = $(if $(CUDA_HOME_VENV),CUDA_HOME=$(CUDA_HOME_VENV),)

.PHONY: venv build test test-python test-cuda-path test-cpp demo bench lint clean info

venv: $(STAMP)

$(STAMP):
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	# plain `torch` takes the newest CUDA-enabled build (torchvision needs it)
	$(PIP) install torch torchvision
	$(PIP) install ninja numpy scipy scikit-learn tqdm matplotlib safetensors \
	    pytest pytest-xdist hypothesis pytest-benchmark expecttest opacus ruff "mypy>=2.4,<2.5"
	# nvcc matching torch's CUDA version, for compiling the CUDA kernels
	$(PY) -c "import torch,sys;v=torch.version.cuda;sys.exit(0 if v else 1)" && \
	  $(PIP) install "cuda-toolkit[nvcc,cccl]==$$($(PY) -c 'import torch;print(torch.version.cuda)').*" || \
	  echo "torch has no CUDA: building CPU kernels only"
	touch $(STAMP)

$(BUILT): $(STAMP) setup.py $(wildcard csrc/*.cpp csrc/*.h csrc/cpu/*.cpp csrc/cuda/*.cu csrc/cuda/*.cuh)
	@mkdir -p build
	@echo "building the extension (log: build/pip-install.log)"
	$(BUILD_ENV) $(PIP) install --no-build-isolation --no-deps -v -e . > build/pip-install.log 2>&1 || \
	  (grep -E -A3 "error|Error" build/pip-install.log | tail -60; exit 1)
	@sed -n '/fastunlearn build configuration/,/^ *=====/p' build/pip-install.log | tail -n +1
	$(PY) -c "import fastunlearn,json;b=fastunlearn.backend();print('compiled:',b['compiled'],'cpu:',b['cpu'],'cuda:',b['cuda']);assert b['cpu'],b"
	touch $(BUILT)

build: $(BUILT)

test: test-python test-cuda-path test-cpp

test-python: $(BUILT)
	@date +"[make] %T test-python"
	$(TEST_ENV) $(PY) -m pytest tests $(XDIST) $(PYTEST_ARGS)

# certified removal's tests again with the removal loop of the CUDA path (fixed_step: its
# graphs' functions, run eagerly) in place of the CPU's compiled step, so that every
# scenario of the suite (retrains, budget errors, subsampling, refreshes) covers that loop;
# (with its fused ops certified_start_, certified_woodbury_row_, certified_cg_tail_,
# certified_commit_, the default), then once more without them
test-cuda-path: $(BUILT)
	@date +"[make] %T test-cuda-path"
	$(TEST_ENV) FASTUNLEARN_FIXED_STEP=eager $(PY) -m pytest tests/certified -q $(XDIST) $(PYTEST_ARGS)
	$(TEST_ENV) FASTUNLEARN_FIXED_STEP=eager FASTUNLEARN_CERTIFIED_FUSED=0 \
	  $(PY) -m pytest tests/certified -q $(XDIST) $(PYTEST_ARGS)

test-cpp: $(STAMP)
	@date +"[make] %T test-cpp"
	$(PY) -c "import torch" && cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release \
	  -DCMAKE_PREFIX_PATH=$$($(PY) -c 'import torch;print(torch.utils.cmake_prefix_path)') \
	  -DPython3_EXECUTABLE=$(abspath $(PY)) > build/cmake.log 2>&1 || (cat build/cmake.log; exit 1)
	cmake --build build/cmake -j 2
	cd build/cmake && ctest --output-on-failure

# Passive OpenMP waiting: spinning workers make timings 10-100x slower when the cores are
# shared with other work (seen on 2-core CI machines); the runtime reads it at import.
demo: $(BUILT)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m fastunlearn.demo

bench: $(BUILT)
	OMP_WAIT_POLICY=$${OMP_WAIT_POLICY:-PASSIVE} $(PY) -m bench.run

info: $(BUILT)
	$(VENV)/bin/fastunlearn info

lint: $(STAMP)
	$(VENV)/bin/ruff check fastunlearn tests bench setup.py
	$(VENV)/bin/mypy

clean:
	rm -rf build *.egg-info fastunlearn/_C*.so fastunlearn/_build_info.json $(BUILT)
