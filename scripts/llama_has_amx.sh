#!/usr/bin/env bash
# Exit 0 when the installed llama.cpp CPU backend holds AMX tile instructions (see setup.sh);
# 1 when it holds none. objdump comes with binutils, which compiling llama.cpp needs anyway.
set -eu
lib=$(python -c 'import llama_cpp, pathlib; print(pathlib.Path(llama_cpp.__file__).parent / "lib")')
found=$(objdump -d "$lib"/libggml-cpu.so* | grep -c ldtilecfg || true)
[ "$found" -gt 0 ]
