# The two commands a newcomer needs: `make demo` (install and run), `make test`.
PY ?= python3

.PHONY: install demo test lint bench

install:
	$(PY) -m pip install -q -e '.[dev]'

demo: install
	vitalgate demo

lint:
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

bench: install
	$(PY) -m benchmarks
