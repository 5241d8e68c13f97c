"""A sampling run beyond one call of `sample`: torchrun sharding, merging results, and the output records.

`mdlm sample` writes ``<out>.jsonl`` (one line per sample in sample-index order, `sample_record`; bit-identical
for the same seed and settings on CPU) and ``<stem>.meta.json`` (`run_meta`: settings, the protocol record,
schedule, and per model the calls, row-forwards and head positions, wall times). Under torchrun (WORLD_SIZE /
RANK set) sample indices are sharded round-robin over ranks (gloo), gathered, and rank 0 writes the files.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.io import atomic_write_json, atomic_write_text
from mdlm.onednn import cpu_capability
from mdlm.sampler import SampleResult, sample
from mdlm.sampling_law import SamplerConfig, sampling_protocol
from mdlm.schedule import Schedule


def merge_results(results: Sequence[SampleResult]) -> SampleResult:
    """One result from several (ranks or runs over disjoint sample indices), rows in sample-index order."""
    first = results[0]
    indices = np.concatenate([r.sample_indices for r in results])
    order = np.argsort(indices, kind="stable")
    if len(np.unique(indices)) != len(indices):
        raise ValueError("merge_results: overlapping sample indices")

    def cat(name: str) -> np.ndarray:
        return np.concatenate([getattr(r, name) for r in results])[order]

    return SampleResult(
        sample_indices=indices[order], token_ids=cat("token_ids"), unmask_step=cat("unmask_step"),
        prefix_len=cat("prefix_len"), final_pass=cat("final_pass"), aliases=list(first.aliases),
        models=dict(first.models), row_forwards=cat("row_forwards"),
        calls=np.sum([r.calls for r in results], axis=0),
        head_positions=np.sum([r.head_positions for r in results], axis=0),
        last_block_positions=np.sum([r.last_block_positions for r in results], axis=0),
        conditioning_rows=np.sum([r.conditioning_rows for r in results], axis=0),
        wall_times=[w for r in results for w in r.wall_times],
    )


# ---- torchrun sharding ---------------------------------------------------------------------------------


def world() -> tuple[int, int]:
    """(world size, rank) from the torchrun environment; (1, 0) outside torchrun."""
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def sample_distributed(*, sample_indices: Sequence[int], **kwargs: Any) -> SampleResult | None:
    """`sample` with indices sharded round-robin over torchrun ranks; rank 0 gets the merged result.

    Identical to one process running all indices (random numbers are per sample index). Other ranks get
    None. Initialises (and then destroys) a gloo process group if none exists.
    """
    size, rank = world()
    if size == 1:
        return sample(sample_indices=sample_indices, **kwargs)
    import torch.distributed as dist

    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group(backend="gloo")
    try:
        mine = sorted(sample_indices)[rank::size]
        result = sample(sample_indices=mine, **kwargs)
        gathered: list[SampleResult] | None = [None] * size if rank == 0 else None  # type: ignore[list-item]
        dist.gather_object(result, gathered, dst=0)
        return merge_results(gathered) if rank == 0 else None
    finally:
        if owned:
            dist.destroy_process_group()


# ---- output records ------------------------------------------------------------------------------------


def meta_path(out: str | os.PathLike) -> Path:
    """The run-level record next to the samples: runs/x/samples/sandwich.jsonl -> sandwich.meta.json."""
    return Path(out).with_suffix(".meta.json")


def sample_record(result: SampleResult, k: int, text: str, schedule: Schedule, seed: int,
                  config: SamplerConfig) -> dict[str, Any]:
    """The JSON line of row k of ``result``."""
    rf = result.row_forwards_by_model()
    return {
        "sample_index": int(result.sample_indices[k]),
        "seed": seed,
        "schedule": schedule.name,
        "schedule_sha256": schedule.source_sha256,
        "steps": schedule.steps,
        "predictor": config.predictor,
        "precision": config.precision,
        "top_p": config.top_p,
        "noise_removal": config.noise_removal,
        "prefix_len": int(result.prefix_len[k]),
        "row_forwards": {name: int(v[k]) for name, v in rf.items()},
        "final_pass": bool(result.final_pass[k]),
        "text": text,
        "token_ids": result.token_ids[k].tolist(),
    }


def run_meta(result: SampleResult, schedule: Schedule, seed: int, config: SamplerConfig,
             **extra: Any) -> dict[str, Any]:
    """Run-level record: settings, schedule, NFE totals per model and alias, wall times."""
    return {
        "schedule": {"name": schedule.name, "file": schedule.source, "sha256": schedule.source_sha256,
                     "steps": schedule.steps, "segments": schedule.notation, "models": schedule.models,
                     "nominal_steps": schedule.model_steps},
        "seed": seed,
        "num_samples": int(result.sample_indices.size),
        "predictor": config.predictor,
        "precision": config.precision,
        "top_p": config.top_p,
        "noise_removal": config.noise_removal,
        "noise_removal_model": schedule.model_name_at(schedule.steps - 1),
        "t_min": config.t_min,
        "protocol": sampling_protocol(config),
        "calls": result.calls_by_model(),
        "row_forwards": {k: int(v.sum()) for k, v in result.row_forwards_by_model().items()},
        "calls_by_alias": result.calls_by_alias(),
        "row_forwards_by_alias": result.row_forwards_by_alias(),
        "head_positions_by_alias": result.head_positions_by_alias(),
        "per_model": result.cost_by_model(),
        "final_pass_rows": int(result.final_pass.sum()),
        "wall_time_s": float(sum(result.wall_times)),
        # the models' GEMMs depend on the CPU (`mdlm.onednn`): two kinds of machine may differ in a token.
        # Which GEMMs the denoisers ran (`sampling_gemm`, per model) comes from the caller, who holds them.
        "cpu_capability": cpu_capability(),
        "batch_wall_time_s": [round(w, 6) for w in result.wall_times],
        **extra,
    }


def write_samples(out: str | os.PathLike, records: Sequence[dict[str, Any]], meta: dict[str, Any]) -> None:
    """Write ``<out>`` (JSON lines) and its meta file atomically; the meta holds the samples' sha256.

    The meta file is written first, so an existing samples file always has a meta file beside it.
    """
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    meta = {**meta, "samples_file": Path(out).name,
            "samples_sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    atomic_write_json(meta_path(out), meta)
    atomic_write_text(out, text)
