# `make serve`: set up and run the service; `make test`: set up and run the tests.
.PHONY: setup serve test test-fast lint
VENV := .venv/bin

setup: .venv/.setup-done
.venv/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

serve: setup
	$(VENV)/skillroute serve --host 127.0.0.1 --port 8000

test: setup lint
	$(VENV)/pytest -q

test-fast: setup
	$(VENV)/pytest -q -m "not slow"

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
