"""`mdlm flops --profile P --schedule FILE [--samples FILE.jsonl]`: what a model schedule costs, in FLOPs.

Units, everywhere: a **MAC** is one multiply-accumulate; **FLOPs = 2 x MACs**. Per-forward numbers are for
one sequence (batch 1) of the profile's `seq_len`; every term below is linear in the batch.

Per-forward cost of a DiT (`mdlm.model`), analytic, in MACs (d hidden, L length, V vocab, c cond_dim,
r mlp_ratio, n blocks):

| part | what | MACs |
|---|---|---|
| `blocks` | qkv, out and MLP projections; QKᵀ and PV (per block) | n·((4 + 2r)·d²·L + 2·L²·d) |
| `head` | output projection | d·V·L |
| `other` | conditioning, per sequence: adaLN of the blocks and final layer, time MLP | n·6·d·c + 2·d·c + 256·c + c² |

Not MACs, so not counted: embedding lookup, LayerNorms, softmax, activations, rotary and modulation
elementwise ops, bias adds. The fvcore measurement (`fvcore.nn.FlopCountAnalysis`, 1 unit per MAC, with a
handle for `aten::scaled_dot_product_attention`, which fvcore skips by default) is grouped the same way
by module; it also counts LayerNorms (~4 per element, in `blocks` and `head`), which is its only
difference from the analytic count (< 1% at the tiny and smoke sizes, 0.05% at owt's).
The analytic count is the source of truth for savings; fvcore is the cross-check.

Schedule accountings (saving = 1 − cost / cost of the all-heavy reference):

- `blocks_only` (the paper's 16.7%): per-step cost = the model's `blocks` MACs; nominal T steps,
  Σ_model steps_m · blocks_m versus T · blocks_heavy.
- `full`: per-step cost = the model's total MACs (blocks + head + other); nominal T steps.
- `effective` (needs `--samples`): the row-forwards a sampling run really executed (one row-forward = one
  sequence through one model; the ddpm_cache sampler skips the network on cache hits, and the final
  noise-removal pass is one more forward), Σ_model row_forwards_m · total_m, versus the all-heavy run
  without caching that makes the same nominal passes per sequence: rows · (T + 1 if the run did the
  noise-removal pass else T) · total_heavy. So an all-heavy ddpm run has effective saving 0, and the
  saving of a ddpm_cache run includes what caching saved.
- `effective_vs_baseline` (needs `--baseline-samples`, e.g. the all-heavy run of the same sampler):
  1 − (effective cost per sequence) / (the baseline run's effective cost per sequence).

Final noise-removal pass: the nominal accountings count T steps and exclude it (as the paper's 16.7%
does); the effective accounting counts it, because it counts every real row-forward.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from mdlm.errors import UserError
from mdlm.io import read_jsonl
from mdlm.model import DiTConfig, model_config
from mdlm.tokenizers import MODEL_VOCAB

TIME_FREQ_DIM = 256  # sinusoidal features of mdlm.model.TimestepEmbedder
REFERENCE_MODEL = "heavy"  # savings are relative to running this model at every step
SDPA_OP = "aten::scaled_dot_product_attention"
NOISE_REMOVAL_CONVENTION = (
    "nominal accountings (blocks_only, full) count the T sampling steps and exclude the final "
    "noise-removal pass; effective counts every real row-forward, that pass included, against rows x "
    "(T + 1 if the run did the pass else T) all-heavy forwards"
)


# ------------------------------------------------------------------------------------------------------------
# per-forward cost


@dataclass(frozen=True)
class ForwardMacs:
    """MACs of one forward pass, by part (see the module docstring)."""

    blocks: int
    head: int
    other: int

    @property
    def total(self) -> int:
        return self.blocks + self.head + self.other

    def macs(self) -> dict[str, int]:
        return {"blocks": self.blocks, "head": self.head, "other": self.other, "total": self.total}

    def flops(self) -> dict[str, int]:
        return {k: 2 * v for k, v in self.macs().items()}


def analytic_macs(cfg: DiTConfig, batch: int = 1, length: int | None = None) -> ForwardMacs:
    """Hand-derived MACs of `MDLM(cfg)` on ids [batch, length] (default length: cfg.length)."""
    L = cfg.length if length is None else length
    d, V, c, n, r = cfg.hidden_size, cfg.vocab_size, cfg.cond_dim, cfg.n_blocks, cfg.mlp_ratio
    per_block = (4 + 2 * r) * d * d * L + 2 * L * L * d  # linear layers + QK^T and PV
    head = d * V * L
    conditioning = n * 6 * d * c + 2 * d * c + TIME_FREQ_DIM * c + c * c  # adaLN (blocks, final) + time MLP
    return ForwardMacs(blocks=batch * n * per_block, head=batch * head, other=batch * conditioning)


def _sdpa_macs(inputs, outputs) -> int:
    """fvcore handle: q [.., Lq, E], k [.., Lk, E], v [.., Lk, Ev] -> prod(..)·Lq·Lk·(E + Ev) MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _config_key(cfg: DiTConfig) -> tuple:
    return tuple(sorted(asdict(cfg).items()))


@functools.lru_cache(maxsize=16)
def _fvcore_cached(key: tuple, batch: int, length: int) -> tuple[ForwardMacs, tuple[str, ...]]:
    import torch

    from mdlm.model import MDLM

    cfg = DiTConfig(**dict(key))
    with warnings.catch_warnings():
        # fvcore relies on deprecated TorchScript tracing; the warnings say so on import and on every trace
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        from fvcore.nn import FlopCountAnalysis

        with torch.random.fork_rng(devices=[]):  # random init must not move the caller's RNG
            torch.manual_seed(0)
            model = MDLM(cfg).eval()
        ids = torch.zeros(batch, length, dtype=torch.long)  # values do not matter, shapes do
        fca = FlopCountAnalysis(model, (ids,)).set_op_handle(SDPA_OP, _sdpa_macs)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            by_module = fca.by_module()
            uncounted = tuple(sorted(fca.unsupported_ops()))
    blocks = sum(by_module[f"backbone.blocks.{i}"] - by_module[f"backbone.blocks.{i}.adaLN_modulation"]
                 for i in range(cfg.n_blocks))
    head = by_module["backbone.output_layer"] - by_module["backbone.output_layer.adaLN_modulation"]
    return ForwardMacs(blocks=blocks, head=head, other=by_module[""] - blocks - head), uncounted


def fvcore_macs(cfg: DiTConfig, batch: int = 1, length: int | None = None) -> ForwardMacs:
    """MACs of `MDLM(cfg)` measured by fvcore tracing (one real forward; cached per config in a process)."""
    return _fvcore_cached(_config_key(cfg), batch, cfg.length if length is None else length)[0]


def fvcore_uncounted_ops(cfg: DiTConfig, batch: int = 1, length: int | None = None) -> tuple[str, ...]:
    """Ops fvcore saw but has no formula for (elementwise, activations, ...): not MACs, left out by design."""
    return _fvcore_cached(_config_key(cfg), batch, cfg.length if length is None else length)[1]


def forward_flops(cfg: DiTConfig, batch: int = 1, length: int | None = None, measure: bool = True) -> dict:
    """Analytic (and, if ``measure``, fvcore) MACs and FLOPs of one forward, by part."""
    analytic = analytic_macs(cfg, batch, length)
    out: dict[str, Any] = {"batch": batch, "length": cfg.length if length is None else length,
                           "analytic": {"macs": analytic.macs(), "flops": analytic.flops()}}
    if measure:
        measured = fvcore_macs(cfg, batch, length)
        out["fvcore"] = {"macs": measured.macs(), "flops": measured.flops(),
                         "uncounted_ops": list(fvcore_uncounted_ops(cfg, batch, length))}
        out["fvcore_over_analytic"] = measured.total / analytic.total
    return out


# ------------------------------------------------------------------------------------------------------------
# schedule accountings


def saving(steps_per_model: dict[str, int], cost: dict[str, int | float], reference: str = REFERENCE_MODEL
           ) -> float:
    """1 − Σ_m steps_m·cost_m / (Σ_m steps_m · cost_reference): nominal saving vs all-reference."""
    total_steps = sum(steps_per_model.values())
    spent = sum(n * cost[m] for m, n in steps_per_model.items())
    return 1.0 - spent / (total_steps * cost[reference])


def schedule_savings(steps_per_model: dict[str, int], costs: dict[str, ForwardMacs],
                     reference: str = REFERENCE_MODEL) -> dict[str, float]:
    """Nominal savings vs all-``reference`` under the `blocks_only` and `full` accountings."""
    return {
        "blocks_only_saving": saving(steps_per_model, {m: c.blocks for m, c in costs.items()}, reference),
        "full_saving": saving(steps_per_model, {m: c.total for m, c in costs.items()}, reference),
    }


@dataclass
class SampledRun:
    """What `mdlm sample` recorded: sequences, steps and per-model row-forwards of one run."""

    path: str
    rows: int
    steps: int
    noise_removal: bool
    row_forwards: dict[str, int]
    calls: dict[str, int] = field(default_factory=dict)
    schedule: str | None = None  # schedule name recorded with the samples
    notation: str | None = None  # its segments, from the run record (meta file), if present


def effective_accounting(run: SampledRun, costs: dict[str, ForwardMacs], reference: str = REFERENCE_MODEL,
                         baseline: SampledRun | None = None) -> dict[str, Any]:
    """The `effective` accounting of one sampled run (module docstring), in MACs and FLOPs."""
    unknown = sorted(set(run.row_forwards) - set(costs))
    if unknown:
        raise UserError(f"{run.path}: row-forwards of model(s) {', '.join(unknown)} that the schedule does not "
                        f"use (schedule models: {', '.join(costs)})")
    spent = sum(n * costs[m].total for m, n in run.row_forwards.items())
    passes = run.steps + (1 if run.noise_removal else 0)
    nominal = run.rows * passes * costs[reference].total
    out: dict[str, Any] = {
        "samples": run.path, "rows": run.rows, "steps": run.steps, "noise_removal": run.noise_removal,
        "row_forwards": dict(run.row_forwards), "calls": dict(run.calls),
        "row_forwards_per_row": {m: n / run.rows for m, n in run.row_forwards.items()},
        "nominal_passes_per_row": passes,
        "macs": spent, "flops": 2 * spent,
        "all_heavy_macs": nominal, "all_heavy_flops": 2 * nominal,
        "saving": 1.0 - spent / nominal,
    }
    if baseline is not None:
        missing = sorted(set(baseline.row_forwards) - set(costs))
        if missing:
            raise UserError(f"{baseline.path}: row-forwards of model(s) {', '.join(missing)} without a cost "
                            f"(known: {', '.join(costs)})")
        base = sum(n * costs[m].total for m, n in baseline.row_forwards.items())
        out["baseline"] = {"samples": baseline.path, "rows": baseline.rows,
                           "row_forwards": dict(baseline.row_forwards), "macs": base, "flops": 2 * base}
        out["saving_vs_baseline"] = 1.0 - (spent / run.rows) / (base / baseline.rows)
    return out


# ------------------------------------------------------------------------------------------------------------
# reading a sampling run


def read_sampled_run(path: str | Path) -> SampledRun:
    """Per-model row-forwards of a samples JSONL written by `mdlm sample` (records: `sampler.sample_record`).

    Every line must carry `schedule`, `steps`, `noise_removal` and `row_forwards` ({model name: count});
    all lines must agree on the first three. Batched call counts come from the run's `<stem>.meta.json`
    beside it, when present (informational only).
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
        counts = _field(row, "row_forwards", path, n, dict)
        for model, count in counts.items():
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise UserError(f"{path}:{n}: row_forwards[{model!r}] = {count!r}, expected a count >= 0")
            row_forwards[model] = row_forwards.get(model, 0) + count
    schedule, steps, noise_removal = first
    if steps < 1:
        raise UserError(f"{path}: steps = {steps}, expected a positive integer")
    calls, notation = _read_meta(path)
    return SampledRun(path=str(path), rows=len(rows), steps=steps, noise_removal=noise_removal,
                      row_forwards=row_forwards, calls=calls, schedule=schedule, notation=notation)


def _read_meta(samples: Path) -> tuple[dict[str, int], str | None]:
    meta = samples.with_suffix(".meta.json")
    if not meta.is_file():
        return {}, None
    try:
        m = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{meta}: unreadable run record ({exc})") from None
    calls = m.get("calls") if isinstance(m, dict) else None
    schedule = m.get("schedule") if isinstance(m, dict) else None
    notation = schedule.get("segments") if isinstance(schedule, dict) else None
    calls = {k: v for k, v in calls.items() if isinstance(v, int)} if isinstance(calls, dict) else {}
    return calls, notation if isinstance(notation, str) else None


def _field(row: dict[str, Any], name: str, path: Path, n: int, kind: type):
    if name not in row:
        raise UserError(f"{path}:{n}: missing field {name!r} (is this a samples file of `mdlm sample`?)")
    value = row[name]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise UserError(f"{path}:{n}: field {name!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


# ------------------------------------------------------------------------------------------------------------
# profile -> report


def profile_vocab_size(profile: dict[str, Any]) -> int:
    name = profile["tokenizer"]
    if name not in MODEL_VOCAB:
        raise UserError(f"params.yaml: profile {profile['name']!r}: unknown tokenizer {name!r}, "
                        f"expected one of {', '.join(MODEL_VOCAB)}")
    return MODEL_VOCAB[name]


def profile_model_configs(profile: dict[str, Any], names: Iterable[str]) -> dict[str, DiTConfig]:
    """Config of each named model of a profile (`heavy`, `light`: `model.<name>_blocks` in params.yaml)."""
    vocab = profile_vocab_size(profile)
    out = {}
    for name in names:
        if f"{name}_blocks" not in profile["model"]:
            raise UserError(f"params.yaml: profile {profile['name']!r} has no model {name!r} "
                            f"(no model.{name}_blocks)")
        out[name] = model_config(profile, name, vocab)
    return out


def flops_report(profile: dict[str, Any], schedule_path: str | Path, samples: str | Path | None = None,
                 baseline_samples: str | Path | None = None, steps: int | None = None,
                 measure: bool = True) -> dict[str, Any]:
    """Everything `mdlm flops` reports, as a JSON-ready dict (see the module docstring for definitions)."""
    from mdlm.schedule import load_schedule, resolve_schedule_path

    if baseline_samples is not None and samples is None:
        raise UserError("--baseline-samples needs --samples (the run to compare with the baseline run)")
    run = read_sampled_run(samples) if samples is not None else None
    baseline = read_sampled_run(baseline_samples) if baseline_samples is not None else None
    if run is not None:
        if steps is not None and steps != run.steps:
            raise UserError(f"{run.path}: sampled with {run.steps} steps, but --steps is {steps}")
        steps = run.steps
    steps = steps if steps is not None else int(profile["sample"]["steps"])
    schedule = load_schedule(resolve_schedule_path(schedule_path), steps)
    if run is not None and (run.schedule != schedule.name
                            or run.notation is not None and run.notation != schedule.notation):
        raise UserError(f"{run.path}: sampled with schedule {run.schedule!r} ({run.notation or 'segments unknown'}), "
                        f"not {schedule.name!r} ({schedule.notation}, {schedule.source})")

    steps_per_model = schedule.model_steps
    names = list(dict.fromkeys([REFERENCE_MODEL, *steps_per_model]))
    configs = profile_model_configs(profile, names)
    costs = {m: analytic_macs(cfg) for m, cfg in configs.items()}

    models = {}
    for m, cfg in configs.items():
        entry = {"steps": steps_per_model.get(m, 0), "config": cfg.to_dict(), **forward_flops(cfg, measure=measure)}
        models[m] = entry
    nominal = schedule_savings(steps_per_model, costs)
    accountings: dict[str, Any] = {}
    for acc, part in (("blocks_only", "blocks"), ("full", "total")):
        spent = sum(n * getattr(costs[m], part) for m, n in steps_per_model.items())
        ref = steps * getattr(costs[REFERENCE_MODEL], part)
        accountings[acc] = {"macs": spent, "flops": 2 * spent, "all_heavy_macs": ref, "all_heavy_flops": 2 * ref,
                            "saving": nominal[f"{acc}_saving"]}
    if measure:
        measured = {m: fvcore_macs(cfg) for m, cfg in configs.items()}
        accountings["full"]["saving_fvcore"] = saving(steps_per_model, {m: c.total for m, c in measured.items()})
        accountings["blocks_only"]["saving_fvcore"] = saving(steps_per_model,
                                                             {m: c.blocks for m, c in measured.items()})

    report: dict[str, Any] = {
        "profile": profile["name"], "schedule": schedule.name, "schedule_file": schedule.source,
        "notation": schedule.notation, "steps": steps, "seq_len": int(profile["data"]["seq_len"]),
        "units": "MACs = multiply-accumulates, FLOPs = 2 x MACs; models: one forward of one sequence (batch 1); "
                 "blocks_only/full: one sequence through the T steps; effective: the whole samples file",
        "reference": REFERENCE_MODEL, "steps_per_model": steps_per_model,
        "noise_removal_convention": NOISE_REMOVAL_CONVENTION,
        "blocks_only_saving": nominal["blocks_only_saving"], "full_saving": nominal["full_saving"],
        "models": models, "accountings": accountings,
    }
    if run is not None:
        effective = effective_accounting(run, costs, baseline=baseline)
        accountings["effective"] = effective
        report["effective_saving"] = effective["saving"]
        if baseline is not None:
            report["effective_saving_vs_baseline"] = effective["saving_vs_baseline"]
    return report


def format_report(r: dict[str, Any]) -> str:
    """Human-readable summary of `flops_report`."""
    g = 1e9
    lines = [f"profile {r['profile']}, schedule {r['schedule']} ({r['notation']}), T = {r['steps']}, "
             f"seq_len {r['seq_len']}", f"units: {r['units']}", "",
             f"{'model':<8} {'steps':>6} {'blocks GFLOPs':>14} {'head GFLOPs':>12} {'other GFLOPs':>13} "
             f"{'total GFLOPs':>13} {'fvcore GFLOPs':>14} {'fvcore/analytic':>16}"]
    for m, e in r["models"].items():
        a = e["analytic"]["flops"]
        fv = e.get("fvcore", {}).get("flops", {}).get("total")
        ratio = e.get("fvcore_over_analytic")
        lines.append(f"{m:<8} {e['steps']:>6} {a['blocks'] / g:>14.3f} {a['head'] / g:>12.3f} {a['other'] / g:>13.4f} "
                     f"{a['total'] / g:>13.3f} {'-' if fv is None else f'{fv / g:.3f}':>14} "
                     f"{'-' if ratio is None else f'{ratio:.5f}':>16}")
    lines += ["", f"{'accounting':<12} {'TFLOPs/sequence':>16} {'all-heavy':>10} {'saving':>8}"]
    for acc, a in r["accountings"].items():
        per = a["rows"] if acc == "effective" else 1
        lines.append(f"{acc:<12} {a['flops'] / per / 1e12:>16.4f} {a['all_heavy_flops'] / per / 1e12:>10.4f} "
                     f"{a['saving']:>8.2%}")
    if "effective_saving_vs_baseline" in r:
        lines.append(f"effective vs baseline run {r['accountings']['effective']['baseline']['samples']}: "
                     f"{r['effective_saving_vs_baseline']:.2%}")
    lines += ["", f"convention: {r['noise_removal_convention']}"]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# command


def add_arguments(p) -> None:
    p.add_argument("--profile", default=None, help="profile of params.yaml (default: its `profile` key)")
    p.add_argument("--schedule", required=True, help="schedule file, or the name of one in schedules/")
    p.add_argument("--samples", default=None, help="samples JSONL of `mdlm sample`: adds the effective accounting")
    p.add_argument("--baseline-samples", default=None,
                   help="samples JSONL of a reference run (e.g. all-heavy): effective saving vs that run")
    p.add_argument("--steps", type=int, default=None,
                   help="T (default: the samples' T, else the profile's sample.steps)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", default=None, help="also write the JSON report to this file (atomically)")


def main(args) -> int:
    from mdlm.io import atomic_write_json
    from mdlm.profiles import load_profile

    profile = load_profile(args.profile)
    report = flops_report(profile, args.schedule, samples=args.samples, baseline_samples=args.baseline_samples,
                          steps=args.steps)
    if args.out:
        atomic_write_json(args.out, report)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
