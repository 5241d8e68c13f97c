"""`mdlm ship --profile P --from DIR`: turn a trained heavy/light pair into the shipped, hash-pinned checkpoints.

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

from mdlm.checkpoints import CONFIG, MANIFEST, WEIGHTS, load_model, save_model, sha256_file
from mdlm.io import atomic_write_json, read_jsonl
from mdlm.profiles import load_profile, project_root


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


def validation_nelbo(model, profile: dict[str, Any], batches: int | None = None) -> float:
    from mdlm.data import load_split, read_meta
    from mdlm.diffusion import LogLinearNoise
    from mdlm.train import data_vocab, evaluate_nelbo

    cfg = dict(profile["train"])
    if batches is not None:
        cfg["eval_batches"] = batches
    _, mask_id = data_vocab(profile, read_meta(profile))
    return evaluate_nelbo(model, load_split(profile, "valid"), cfg, mask_id, LogLinearNoise(), torch.device("cpu"))


def ship(profile: dict[str, Any], source: Path, command: str, notes: str = "") -> dict[str, Any]:
    from mdlm.data import read_meta

    dest = project_root() / profile["checkpoints"]["dir"]
    manifest: dict[str, Any] = {"profile": profile["name"], "command": command, "notes": notes,
                                "params": {k: profile[k] for k in ("tokenizer", "data", "model", "train")},
                                "data_sha256": read_meta(profile).get("sha256", {}), "files": {}, "models": {}}
    for which in ("heavy", "light"):
        model = load_model(source / which)
        save_model(model, dest / which, extra_config=json.loads((source / which / CONFIG).read_text()),
                   dtype=torch.bfloat16)
        shipped = load_model(dest / which)  # bf16-rounded weights, back in fp32
        history = _metrics(source / which)
        nelbo = validation_nelbo(shipped, profile, batches=10**9)  # the whole validation split
        manifest["models"][which] = {
            "params": shipped.backbone.num_parameters(),
            "blocks": shipped.config.n_blocks,
            "steps": history[-1]["step"],
            "tokens_seen": history[-1]["step"] * profile["train"]["batch_size"] * profile["data"]["seq_len"],
            "train_wall_s": train_wall_s(history),
            "valid_nelbo_bf16_full_split": nelbo,
            "valid_ppl_bound": math.exp(nelbo),
            "metrics": history,
        }
        for name in (WEIGHTS, CONFIG):
            manifest["files"][f"{which}/{name}"] = sha256_file(dest / which / name)
    gap = manifest["models"]["light"]["valid_nelbo_bf16_full_split"] - \
        manifest["models"]["heavy"]["valid_nelbo_bf16_full_split"]
    manifest["heavy_minus_light_gap_nats"] = gap
    atomic_write_json(dest / MANIFEST, manifest)
    return manifest


def add_arguments(p) -> None:
    p.add_argument("--profile", default=None)
    p.add_argument("--from", dest="source", type=Path, required=True,
                   help="folder with heavy/ and light/ written by `mdlm train --out`")
    p.add_argument("--command", required=True, help="the exact training command(s), recorded in the manifest")
    p.add_argument("--notes", default="", help="hardware, wall time, anything a reader needs")


def main(args) -> int:
    profile = load_profile(args.profile)
    manifest = ship(profile, args.source, args.command, args.notes)
    summary = {w: {k: m[k] for k in ("params", "steps", "tokens_seen", "valid_nelbo_bf16_full_split")}
               for w, m in manifest["models"].items()}
    print(json.dumps({"gap_nats": manifest["heavy_minus_light_gap_nats"], **summary}, indent=2))
    return 0
