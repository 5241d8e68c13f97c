"""What a sampling run recorded, for the FLOP accountings: per-model counts of a samples file and its run record.

`mdlm sample` writes `<out>.jsonl` (one line per sample, with its `row_forwards` per model) and
`<stem>.meta.json` (the run record: `calls`, `row_forwards` and, from samplers that compute the output head
and the last block only where a step needs them, `head_positions` and `last_block_positions` per model; from
samplers that record it, `conditioning_rows`).
`read_sampled_run` reads both and checks that they describe the same run.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mdlm.errors import UserError
from mdlm.flops import SampledRun
from mdlm.io import read_jsonl


def read_sampled_run(path: str | Path) -> SampledRun:
    """Counts of a samples JSONL written by `mdlm sample` and of its run record `<stem>.meta.json`.

    Every line must carry `schedule`, `steps`, `noise_removal` and `row_forwards` ({model name: count});
    all lines must agree on the first three. The run record must exist and agree with the lines; it
    gives the batched call counts and, when the sampler records them, the head positions per model.
    """
    path = Path(path)
    rows = list(read_jsonl(path, "samples file"))
    if not rows:
        raise UserError(f"{path}: no samples")
    first: tuple | None = None
    row_forwards: dict[str, int] = {}
    for n, row in rows:
        key = (_field(row, "schedule", path, n, str), _field(row, "steps", path, n, int),
               _field(row, "noise_removal", path, n, bool))
        if first is None:
            first = key
        elif key != first:
            raise UserError(f"{path}:{n}: (schedule, steps, noise_removal) = {key}, but line 1 has {first}; "
                            f"a samples file must hold one run")
        for model, count in _counts(_field(row, "row_forwards", path, n, dict), f"{path}:{n}: row_forwards"
                                    ).items():
            row_forwards[model] = row_forwards.get(model, 0) + count
    schedule, steps, noise_removal = first
    if steps < 1:
        raise UserError(f"{path}: steps = {steps}, expected a positive integer")
    run = SampledRun(path=str(path), rows=len(rows), steps=steps, noise_removal=noise_removal,
                     row_forwards=row_forwards, schedule=schedule)
    _apply_meta(run, path.with_suffix(".meta.json"))
    return run


def _apply_meta(run: SampledRun, meta_file: Path) -> None:
    if not meta_file.is_file():
        raise UserError(f"{meta_file}: missing (the run record `mdlm sample` writes beside {Path(run.path).name})")
    try:
        meta = json.loads(meta_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta_file}: unreadable run record ({exc})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{meta_file}: expected a JSON object")
    counts = run_counts_from_meta(meta, str(meta_file))
    if counts["row_forwards"] is not None and counts["row_forwards"] != run.row_forwards:
        raise UserError(f"{meta_file}: row_forwards {counts['row_forwards']} do not match the samples' "
                        f"{run.row_forwards} (a run record of another run?)")
    run.calls = counts["calls"] or {}
    run.head_positions = counts["head_positions"]
    run.last_block_positions = counts["last_block_positions"]
    run.conditioning_rows = counts["conditioning_rows"]
    schedule = meta.get("schedule")
    notation = schedule.get("segments") if isinstance(schedule, dict) else None
    run.notation = notation if isinstance(notation, str) else None


def run_counts_from_meta(meta: dict[str, Any], where: str) -> dict[str, dict[str, int] | None]:
    """`calls`, `row_forwards`, `head_positions`, `last_block_positions`, `conditioning_rows` per model name
    from a run record (None: not recorded).

    Layouts: flat dicts `meta[kind] = {model: int}` (`calls` and `row_forwards` always were), and the
    per-model table `meta["per_model"] = {model: {"calls": int, "row_forwards": int, "head_positions": int,
    "last_block_positions": int, "conditioning_rows": int}}`; a kind recorded both ways must agree.
    """
    table = meta.get("per_model")
    if table is not None and not (isinstance(table, dict) and all(isinstance(e, dict) for e in table.values())):
        raise UserError(f"{where}: per_model is not a {{model: {{count name: count}}}} table")
    out: dict[str, dict[str, int] | None] = {}
    for kind in ("calls", "row_forwards", "head_positions", "last_block_positions", "conditioning_rows"):
        flat = meta.get(kind)
        if flat is not None and not isinstance(flat, dict):
            raise UserError(f"{where}: {kind} is {type(flat).__name__}, expected {{model: count}}")
        flat = _counts(flat, f"{where}: {kind}") if flat is not None else None
        per_model = {m: e[kind] for m, e in (table or {}).items() if kind in e}
        per_model = _counts(per_model, f"{where}: per_model {kind}") if per_model else None
        if flat is not None and per_model is not None and flat != per_model:
            raise UserError(f"{where}: {kind} {flat} disagrees with per_model's {per_model}")
        out[kind] = flat if flat is not None else per_model
    return out


def _counts(d: dict[str, Any], where: str) -> dict[str, int]:
    for model, count in d.items():
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise UserError(f"{where}[{model!r}] = {count!r}, expected a count >= 0")
    return dict(d)


def _field(row: dict[str, Any], name: str, path: Path, n: int, kind: type):
    if name not in row:
        raise UserError(f"{path}:{n}: missing field {name!r} (is this a samples file of `mdlm sample`?)")
    value = row[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise UserError(f"{path}:{n}: field {name!r} is {type(value).__name__}, expected {kind.__name__}")
    return value
