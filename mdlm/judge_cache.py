"""The judge's offline cache: a GGUF judge dequantized once into a safetensors folder that later loads read.

Dequantizing the shipped GGUF takes ~20 s; the folder loads in under a second. The folder is derived data:
it names the GGUF it came from (its sha256, in `CACHE_MARKER`, written last), is rebuilt when that changes,
and is replaced whole (built in a temporary folder, then renamed), so a reader never sees half a cache.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from mdlm.errors import UserError, first_line
from mdlm.paths import assets_dir, data_dir

GGUF_JUDGES = {"smollm2-135m": ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")}  # name -> (asset, file)
CACHE_MARKER = "judge.json"  # written last into a cached judge folder; names its source GGUF and hash


def gguf_file(asset: str, filename: str) -> Path:
    try:
        from mdlm.assets import asset_path
    except ModuleNotFoundError as exc:
        if exc.name != "mdlm.assets":
            raise
        folder = assets_dir() / asset
    else:
        folder = Path(asset_path(asset))
    path = folder if folder.is_file() else folder / filename
    if not path.is_file():
        raise UserError(f"{path}: judge GGUF not found (fetch the '{asset}' asset: `mdlm assets`)")
    return path


def judge_cache_dir(name: str) -> Path:
    return data_dir() / "judge" / name


def cache_source_sha(cache: Path) -> str | None:
    try:
        return json.loads((cache / CACHE_MARKER).read_text(encoding="utf-8")).get("gguf_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def build_gguf_cache(gguf: Path, gguf_sha: str, name: str, cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"{gguf}: cannot load the judge GGUF: {first_line(exc)}") from None
    # transformers refuses to save a model loaded from GGUF; the weights are already dequantized fp32,
    # so move them into a plain model of the same config (no copy: meta init, then assign).
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"name": name, "gguf_file": gguf.name, "gguf_sha256": gguf_sha}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        share_like_umask(tmp)
        replace_dir(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def share_like_umask(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; give the cache the modes of ordinary outputs."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` (stale cache) is moved aside first."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "dir")
    try:
        os.replace(new, target)
    except OSError:
        if not target.exists():  # another process filled the cache meanwhile otherwise
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
