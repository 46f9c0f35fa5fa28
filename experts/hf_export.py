"""Makes an HF-format model folder (config.json + safetensors + tokenizer) from a packaged GGUF.

vLLM cannot read our GGUFs, and this machine has no hub to fetch safetensors from, so the only
weights vLLM can get are the packaged GGUFs, dequantised by transformers (`gguf_file=`, which
needs the `gguf` and `accelerate` packages) and written with `save_pretrained`. The folder is
built once per model and cached; a finished folder carries a marker file, so a crashed export is
never mistaken for a good one.

Run `python -m experts.hf_export smollm2-135m-instruct` to build one and print its path.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

from experts.backend import BackendError, ModelSourceError
from experts.catalog import resolve_packaged
from experts.options import BackendOptions

# Written last: its presence means every other file in the folder is complete.
DONE_MARKER = ".skillroute-export-done"
# vLLM runs these models in bfloat16 on CPU and GPU alike ("Downcasting torch.float32 to
# torch.bfloat16" otherwise), so writing fp32 would only double the folder for nothing.
EXPORT_DTYPE = "bfloat16"


def exported_path(name: str, cache: Path | None = None) -> Path:
    """Where the folder of catalog model `name` lives: under `cache`, else the default hf/ folder."""
    return (cache if cache is not None else BackendOptions().hf_dir) / name


def is_exported(folder: Path) -> bool:
    return (folder / DONE_MARKER).is_file()


def export_packaged(name: str, dest: Path | None = None, cache: Path | None = None,
                    models: Path | None = None) -> Path:
    """The HF folder for catalog model `name` (at `dest`, else under `cache`), exporting it on
    first use from its GGUF (assembled under `models`)."""
    folder = dest or exported_path(name, cache)
    if is_exported(folder):
        return folder
    gguf = resolve_packaged(name, models)  # verified bytes: size, digest, architecture, chat template
    _export(gguf, folder)
    return folder


def _export(gguf: Path, folder: Path) -> None:
    """Write into a sibling temp folder, then rename: readers never see half a model, and two
    processes, or two threads of one (a size read beside a registration's check), racing both end
    with one complete folder: each writes its own (named by process and thread)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.with_name(f".{folder.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _write_folder(gguf, tmp)
        (tmp / DONE_MARKER).write_text(f"{gguf.name}\n")
        _install(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _install(tmp: Path, folder: Path) -> None:
    if is_exported(folder):
        return  # another process finished first; its folder is as good as ours
    if folder.exists():
        shutil.rmtree(folder)  # left by an export that died before its marker
    try:
        os.replace(tmp, folder)
    except OSError:
        if not is_exported(folder):  # lost a race to a complete folder: fine; otherwise not
            raise


def _write_folder(gguf: Path, out: Path) -> None:
    model, tokenizer = _load_from_gguf(gguf)
    # The GGUF quantizer stays attached after dequantising and would make save_pretrained
    # refuse (or write a quantization_config vLLM then tries to honour); the tensors are
    # plain floats by now, so both are dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)  # carries the GGUF's chat template (chat_template.jinja)
    if not getattr(tokenizer, "chat_template", None):
        raise ModelSourceError(f"{gguf} has no chat template; vLLM's chat() would have none")


def _load_from_gguf(gguf: Path) -> tuple[Any, Any]:
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise BackendError("exporting a GGUF needs torch and transformers") from exc
    for needed in ("gguf", "accelerate"):
        if _missing(needed):
            raise BackendError(f"exporting a GGUF needs the {needed!r} package: pip install {needed}")
    kwargs: dict[str, Any] = {"gguf_file": gguf.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, **kwargs)
    dtype = getattr(torch, EXPORT_DTYPE)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=dtype, **kwargs)
    return model, tokenizer


def _missing(module: str) -> bool:
    return importlib.util.find_spec(module) is None


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m experts.hf_export <catalog model name>", file=sys.stderr)
        return 2
    print(export_packaged(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
