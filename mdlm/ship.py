"""Ship a trained heavy/light pair as a profile's hash-pinned checkpoints (`mdlm ship`).

Copies the EMA weights of DIR/heavy and DIR/light as bf16 safetensors (small enough for the repository),
re-measures the validation NELBO of the shipped (bf16-rounded) weights, and writes
checkpoints/<profile>/manifest.json: sha256 of every file, the training command, profile parameters, data
hashes and the training metrics. `mdlm train` with `checkpoints.source: shipped` verifies those hashes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from mdlm.checkpoints import CONFIG, MANIFEST, WEIGHTS, load_model, save_model
from mdlm.config import TrainSettings
from mdlm.io import atomic_write_json, read_jsonl, sha256_file


def _metrics(folder: Path) -> list[dict[str, Any]]:
    return [row for _, row in read_jsonl(folder / "metrics.jsonl", "training metrics of a `mdlm train` run")]


def train_wall_s(history: list[dict[str, Any]]) -> float | None:
    """Total training wall time: `elapsed_s` restarts at 0 on every resume, so sum each segment's last value."""
    total, last = 0.0, None
    for row in history:
        t = row.get("elapsed_s")
        if t is None:
            continue
        if last is not None and t < last:
            total += last
        last = t
    return None if last is None else total + last


def validation_nelbo(model, name: str, tokenizer: str, train: TrainSettings, batches: int | None = None) -> float:
    """Validation NELBO of ``model`` on profile ``name``'s prepared data (``batches`` None: train.eval_batches)."""
    from mdlm.data import load_split, read_meta
    from mdlm.diffusion import LogLinearNoise
    from mdlm.train import data_vocab, evaluate_nelbo

    cfg = train if batches is None else train.model_copy(update={"eval_batches": batches})
    _, mask_id = data_vocab(name, tokenizer, read_meta(name))
    return evaluate_nelbo(model, load_split(name, "valid"), cfg, mask_id, LogLinearNoise(), torch.device("cpu"))


def ship(name: str, tokenizer: str, train: TrainSettings, seq_len: int, params: dict[str, Any], dest: Path,
         source: Path, command: str, notes: str = "") -> dict[str, Any]:
    """Copy source/{heavy,light} to dest as bf16 weights, measure them, and write the manifest.

    ``params`` is the profile record kept in the manifest (tokenizer, data, model and train sections).
    """
    from mdlm.data import read_meta

    manifest: dict[str, Any] = {"profile": name, "command": command, "notes": notes, "params": params,
                                "data_sha256": read_meta(name).get("sha256", {}), "files": {}, "models": {}}
    for which in ("heavy", "light"):
        model = load_model(source / which)
        save_model(model, dest / which, extra_config=json.loads((source / which / CONFIG).read_text()),
                   dtype=torch.bfloat16)
        shipped = load_model(dest / which)  # bf16-rounded weights, back in fp32
        history = _metrics(source / which)
        nelbo = validation_nelbo(shipped, name, tokenizer, train, batches=10**9)  # the whole validation split
        manifest["models"][which] = {
            "params": shipped.backbone.num_parameters(),
            "blocks": shipped.config.n_blocks,
            "steps": history[-1]["step"],
            "tokens_seen": history[-1]["step"] * train.batch_size * seq_len,
            "train_wall_s": train_wall_s(history),
            "valid_nelbo_bf16_full_split": nelbo,
            "valid_ppl_bound": math.exp(nelbo),
            "metrics": history,
        }
        for file in (WEIGHTS, CONFIG):
            manifest["files"][f"{which}/{file}"] = sha256_file(dest / which / file)
    gap = manifest["models"]["light"]["valid_nelbo_bf16_full_split"] - \
        manifest["models"]["heavy"]["valid_nelbo_bf16_full_split"]
    manifest["heavy_minus_light_gap_nats"] = gap
    atomic_write_json(dest / MANIFEST, manifest)
    return manifest
