# The two commands a newcomer needs: `make demo` (install and run), `make test`.
PY ?= python3

.PHONY: install demo test test-fast e2e lint bench

install:
	$(PY) -m pip install -q -e '.[dev]'

demo: install
	vitalgate demo

lint:
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest

# while developing: everything but the multi-process end-to-end and browser runs
test-fast:
	$(PY) -m pytest -m "not e2e and not browser"

e2e:
	$(PY) -m pytest -m e2e -s

bench: install
	$(PY) -m benchmarks
