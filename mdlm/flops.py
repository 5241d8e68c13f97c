"""FLOP accounting of model schedules: per-forward costs (analytic, fvcore cross-check) and four accountings.

Units, everywhere: a **MAC** is one multiply-accumulate; **FLOPs = 2 x MACs**. Per-forward numbers are for
one sequence (batch 1) of length L; every term below is linear in the batch.

Per-forward cost of a DiT (`mdlm.model`), analytic, in MACs (d hidden, L length, V vocab, c cond_dim,
r mlp_ratio, n blocks):

| part | what | MACs |
|---|---|---|
| `blocks` | qkv, out and MLP projections; QKᵀ and PV (per block) | n·((4 + 2r)·d²·L + 2·L²·d) |
| `head` | output projection, at every position | d·V·L (d·V per computed position) |
| `other` | conditioning, per sequence: adaLN of the blocks and final layer, time MLP | n·6·d·c + 2·d·c + 256·c + c² |

Not MACs, so not counted: embedding lookup, LayerNorms, softmax, activations, rotary and modulation
elementwise ops, bias adds. The fvcore measurement (`mdlm.fvcore_count`: MACs only, attention included)
traces a real forward, with or without `select`, and is grouped the same way by module. The analytic count
is the source of truth for savings; fvcore is the independent cross-check (they agree exactly at every size
tested).

Schedule accountings (saving = 1 − cost / cost of the all-heavy reference):

- `blocks_only` (the paper's 16.7%): per-step cost = the model's `blocks` MACs; nominal T steps,
  Σ_model steps_m · blocks_m versus T · blocks_heavy.
- `full`: per-step cost = the model's total MACs (blocks + head at every position + other); nominal T steps.
- `effective` (needs a samples file): the row-forwards a sampling run really executed (one row-forward = one
  sequence through one model; ddpm_cache skips rows with nothing to unmask; the final noise-removal pass
  is one more forward), each at the full per-forward cost, versus rows · (T + 1 if the run did the
  noise-removal pass else T) all-heavy full forwards (an all-heavy ddpm run without caching).
- `executed` (needs a samples file and its run record `<stem>.meta.json`): the MACs the sampler really
  executed: per row-forward `blocks`, plus `other` per row-forward that computed the conditioning
  (`conditioning_rows` of the run record: none for the folded sampling forward, which computed it once when
  it was built; not recorded: every row-forward, as the module's forward does), plus d·V per output-head
  position computed (`head_positions` of the run record), less
  the last block's per-position part (`last_block_macs_per_position`) at the positions where it was not
  computed (the folded sampling forward computes it only at each row's selected positions, padded per call:
  `last_block_positions` of the run record; not recorded: computed everywhere).
  Saving = 1 − executed per sequence / the all-heavy run's executed per sequence (its samples file as the
  baseline). Run records without `head_positions` (samplers that computed the head everywhere) are
  counted with the head at every position of every row-forward, and the report says so.

Final noise-removal pass: the nominal accountings count T steps and exclude it (as the paper's 16.7%
does); effective and executed count it, because they count every real row-forward.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from mdlm import fvcore_count
from mdlm.config import ModelSettings
from mdlm.errors import UserError
from mdlm.model import DiTConfig, model_config
from mdlm.schedule import Schedule
from mdlm.tokenizers import MODEL_VOCAB

TIME_FREQ_DIM = 256  # sinusoidal features of mdlm.model.TimestepEmbedder
REFERENCE_MODEL = "heavy"  # savings are relative to running this model at every step
NOISE_REMOVAL_CONVENTION = (
    "nominal accountings (blocks_only, full) count the T sampling steps and exclude the final "
    "noise-removal pass; effective and executed count every real row-forward, that pass included"
)
HEAD_RECORDED = "recorded"  # head_positions came from the run record
HEAD_ASSUMED = "assumed: head at every position of every row-forward (run record has no head_positions)"


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


def vocab_size(tokenizer: str) -> int:
    """The model vocabulary (mask token included) of a shipped tokenizer name."""
    if tokenizer not in MODEL_VOCAB:
        raise UserError(f"tokenizer {tokenizer!r}: unknown, expected one of {', '.join(MODEL_VOCAB)}")
    return MODEL_VOCAB[tokenizer]


def model_configs(model: ModelSettings, tokenizer: str, seq_len: int, names: Iterable[str]) -> dict[str, DiTConfig]:
    """The DiT config of each named model (`heavy`, `light`) of a profile's `model:` section."""
    out = {}
    for name in dict.fromkeys(names):
        if name not in ("heavy", "light"):
            raise UserError(f"model {name!r}: a profile defines only the models 'heavy' and 'light'")
        out[name] = model_config(model, name, vocab_size(tokenizer), seq_len)
    return out


def forward_costs(model: ModelSettings, tokenizer: str, seq_len: int) -> dict[str, ForwardMacs]:
    """Analytic MACs of one forward of the heavy and the light model of a profile's `model:` section."""
    return {m: analytic_macs(cfg) for m, cfg in model_configs(model, tokenizer, seq_len, ("heavy", "light")).items()}


def head_macs_per_position(cfg: DiTConfig) -> int:
    """The output projection at one position: [d] x [d, V]."""
    return cfg.hidden_size * cfg.vocab_size


def last_block_macs_per_position(cfg: DiTConfig, length: int | None = None) -> int:
    """The part of the last block that a position needs only for its own output: its query, QKᵀ and PV
    against the L keys, the attention output and the MLP. The rest, keys and values (2·d² per position), every
    position needs."""
    L = cfg.length if length is None else length
    d, r = cfg.hidden_size, cfg.mlp_ratio
    return (2 + 2 * r) * d * d + 2 * L * d


def analytic_macs(cfg: DiTConfig, batch: int = 1, length: int | None = None,
                  head_positions: int | None = None) -> ForwardMacs:
    """Hand-derived MACs of `MDLM(cfg)` on ids [batch, length] (default length: cfg.length).

    ``head_positions``: the head runs at that many positions in all (the model's `select`); default: every
    position of every row.
    """
    L = cfg.length if length is None else length
    d, c, n, r = cfg.hidden_size, cfg.cond_dim, cfg.n_blocks, cfg.mlp_ratio
    per_block = (4 + 2 * r) * d * d * L + 2 * L * L * d  # linear layers + QK^T and PV
    positions = batch * L if head_positions is None else head_positions
    conditioning = n * 6 * d * c + 2 * d * c + TIME_FREQ_DIM * c + c * c  # adaLN (blocks, final) + time MLP
    return ForwardMacs(blocks=batch * n * per_block, head=positions * head_macs_per_position(cfg),
                       other=batch * conditioning)


def fvcore_macs(cfg: DiTConfig, batch: int = 1, length: int | None = None,
                selected: int | None = None) -> ForwardMacs:
    """MACs of `MDLM(cfg)` measured by fvcore tracing one real forward (`mdlm.fvcore_count`), by the parts of
    the analytic count. ``selected``: trace a `select` forward with that many head positions."""
    parts = fvcore_count.traced_macs(cfg, batch, cfg.length if length is None else length, selected)
    return ForwardMacs(blocks=parts.blocks, head=parts.head, other=parts.other)


def fvcore_uncounted_ops(cfg: DiTConfig, batch: int = 1, length: int | None = None) -> tuple[str, ...]:
    """Ops fvcore saw but has no formula for (elementwise, activations, ...): not MACs, left out by design."""
    return fvcore_count.traced_macs(cfg, batch, cfg.length if length is None else length, None).uncounted


def forward_flops(cfg: DiTConfig, batch: int = 1, length: int | None = None, measure: bool = True) -> dict:
    """Analytic (and, if ``measure``, fvcore) MACs and FLOPs of one forward, by part."""
    analytic = analytic_macs(cfg, batch, length)
    out: dict[str, Any] = {"batch": batch, "length": cfg.length if length is None else length,
                           "head_macs_per_position": head_macs_per_position(cfg),
                           "analytic": {"macs": analytic.macs(), "flops": analytic.flops()}}
    if measure:
        measured = fvcore_macs(cfg, batch, length)
        out["fvcore"] = {"macs": measured.macs(), "flops": measured.flops(),
                         "uncounted_ops": list(fvcore_uncounted_ops(cfg, batch, length))}
        out["fvcore_over_analytic"] = measured.total / analytic.total
    return out


# ------------------------------------------------------------------------------------------------------------
# nominal accountings


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


# ------------------------------------------------------------------------------------------------------------
# accountings of a sampling run


@dataclass
class SampledRun:
    """What `mdlm sample` recorded: sequences, steps and per-model counts of one run."""

    path: str
    rows: int
    steps: int
    noise_removal: bool
    row_forwards: dict[str, int]
    calls: dict[str, int] = field(default_factory=dict)
    schedule: str | None = None  # schedule name recorded with the samples
    notation: str | None = None  # its segments, from the run record (meta file), if present
    head_positions: dict[str, int] | None = None  # output-head positions computed; None: not recorded
    # positions at which the last block computed queries, attention output and MLP; None: not recorded (the
    # whole last block ran, as in the module's forward)
    last_block_positions: dict[str, int] | None = None
    # row-forwards that computed the conditioning; None: not recorded (every row-forward did, as a module does)
    conditioning_rows: dict[str, int] | None = None


def _check_models(run: SampledRun, configs: dict[str, Any]) -> None:
    unknown = sorted(set(run.row_forwards) - set(configs))
    if unknown:
        raise UserError(f"{run.path}: row-forwards of model(s) {', '.join(unknown)} that the schedule does not "
                        f"use (schedule models: {', '.join(configs)})")


def effective_accounting(run: SampledRun, costs: dict[str, ForwardMacs], reference: str = REFERENCE_MODEL,
                         baseline: SampledRun | None = None) -> dict[str, Any]:
    """The `effective` accounting of one sampled run (module docstring), in MACs and FLOPs."""
    _check_models(run, costs)
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
        _check_models(baseline, costs)
        base = sum(n * costs[m].total for m, n in baseline.row_forwards.items())
        out["baseline"] = {"samples": baseline.path, "rows": baseline.rows,
                           "row_forwards": dict(baseline.row_forwards), "macs": base, "flops": 2 * base}
        out["saving_vs_baseline"] = 1.0 - (spent / run.rows) / (base / baseline.rows)
    return out


def executed_macs(run: SampledRun, configs: dict[str, DiTConfig]) -> tuple[dict[str, int], str]:
    """Executed MACs per model (module docstring) and where the head counts came from."""
    _check_models(run, configs)
    heads = run.head_positions
    source = HEAD_RECORDED if heads is not None else HEAD_ASSUMED
    stray = sorted(set(heads or {}) - set(run.row_forwards))
    if stray:
        raise UserError(f"{run.path}: head positions of model(s) {', '.join(stray)} without row-forwards")
    out = {}
    for m, rf in run.row_forwards.items():
        cfg = configs[m]
        positions = heads.get(m, 0) if heads is not None else rf * cfg.length
        last = (run.last_block_positions or {}).get(m, rf * cfg.length)
        conditioned = (run.conditioning_rows or {}).get(m, rf)
        if conditioned > rf:
            raise UserError(f"{run.path}: {conditioned} conditioning rows of model {m!r} exceed its {rf} row-forwards")
        for what, n in (("head", positions), ("last-block", last)):
            if n > rf * cfg.length:
                raise UserError(f"{run.path}: {n} {what} positions of model {m!r} exceed its {rf} row-forwards"
                                f" x {cfg.length} positions")
        per_row = analytic_macs(cfg, head_positions=0)  # blocks and conditioning of one row-forward
        skipped = (rf * cfg.length - last) * last_block_macs_per_position(cfg)  # last-block positions not computed
        out[m] = rf * per_row.blocks + conditioned * per_row.other - skipped + positions * head_macs_per_position(cfg)
    return out, source


def executed_accounting(run: SampledRun, configs: dict[str, DiTConfig], baseline: SampledRun | None = None
                        ) -> dict[str, Any]:
    """The `executed` accounting of a run, and its saving vs ``baseline`` (the all-heavy run) if given."""
    by_model, source = executed_macs(run, configs)
    spent = sum(by_model.values())
    out: dict[str, Any] = {
        "samples": run.path, "rows": run.rows, "row_forwards": dict(run.row_forwards),
        "head_positions": None if run.head_positions is None else dict(run.head_positions),
        "head_positions_source": source, "macs_by_model": by_model, "macs": spent, "flops": 2 * spent,
        "last_block_positions": None if run.last_block_positions is None else dict(run.last_block_positions),
        "conditioning_rows": None if run.conditioning_rows is None else dict(run.conditioning_rows),
        "macs_per_row": spent / run.rows, "saving": None,
    }
    if baseline is not None:
        base_by_model, base_source = executed_macs(baseline, configs)
        base = sum(base_by_model.values())
        out["baseline"] = {"samples": baseline.path, "rows": baseline.rows, "macs": base, "flops": 2 * base,
                           "head_positions_source": base_source}
        out["all_heavy_macs"] = base * run.rows / baseline.rows  # the baseline's cost per sequence, scaled
        out["all_heavy_flops"] = 2 * out["all_heavy_macs"]
        out["saving"] = 1.0 - (spent / run.rows) / (base / baseline.rows)
    return out


# ------------------------------------------------------------------------------------------------------------
# the report of `mdlm flops`


def schedule_report(configs: dict[str, DiTConfig], schedule: Schedule, run: SampledRun | None = None,
                    baseline: SampledRun | None = None, measure: bool = True) -> dict[str, Any]:
    """Every accounting of ``schedule`` (and of its sampled ``run``), as a JSON-ready dict.

    ``configs``: the DiT config of every model the schedule uses, and of the reference `heavy`.
    """
    missing = sorted({REFERENCE_MODEL, *schedule.model_steps} - set(configs))
    if missing:
        raise UserError(f"schedule {schedule.name!r}: no model config for {', '.join(missing)}")
    if baseline is not None and run is None:
        raise UserError("a baseline run needs a run to compare with it (--baseline-samples needs --samples)")
    steps, steps_per_model = schedule.steps, schedule.model_steps
    costs = {m: analytic_macs(cfg) for m, cfg in configs.items()}
    models = {m: {"steps": steps_per_model.get(m, 0), "config": cfg.to_dict(), **forward_flops(cfg, measure=measure)}
              for m, cfg in configs.items()}
    nominal = schedule_savings(steps_per_model, costs)
    accountings: dict[str, Any] = {}
    for acc, part in (("blocks_only", "blocks"), ("full", "total")):
        spent = sum(n * getattr(costs[m], part) for m, n in steps_per_model.items())
        ref = steps * getattr(costs[REFERENCE_MODEL], part)
        accountings[acc] = {"macs": spent, "flops": 2 * spent, "all_heavy_macs": ref, "all_heavy_flops": 2 * ref,
                            "saving": nominal[f"{acc}_saving"]}
        if measure:
            measured = {m: getattr(fvcore_macs(cfg), part) for m, cfg in configs.items()}
            accountings[acc]["saving_fvcore"] = saving(steps_per_model, measured)
    report: dict[str, Any] = {
        "schedule": schedule.name, "schedule_file": schedule.source, "notation": schedule.notation,
        "steps": steps, "seq_len": configs[REFERENCE_MODEL].length,
        "units": "MACs = multiply-accumulates, FLOPs = 2 x MACs; models: one forward of one sequence (batch 1); "
                 "blocks_only/full: one sequence through the T steps; effective/executed: the whole samples file",
        "reference": REFERENCE_MODEL, "steps_per_model": steps_per_model,
        "noise_removal_convention": NOISE_REMOVAL_CONVENTION,
        "blocks_only_saving": nominal["blocks_only_saving"], "full_saving": nominal["full_saving"],
        "models": models, "accountings": accountings,
    }
    if run is not None:
        effective = effective_accounting(run, costs, baseline=baseline)
        executed = executed_accounting(run, configs, baseline=baseline)
        accountings["effective"], accountings["executed"] = effective, executed
        report["effective_saving"] = effective["saving"]
        report["executed_saving"] = executed["saving"]  # None without a baseline run
        report["head_positions_source"] = executed["head_positions_source"]
        if baseline is not None:
            report["effective_saving_vs_baseline"] = effective["saving_vs_baseline"]
    return report
