"""The scheduled MDLM sampler: `sample` (ddpm_cache with event-driven batching, or ddpm) and `sample_steps`.

Each step i (t = grid[i] -> s = grid[i+1]) runs the schedule's model for that step; a masked position stays
masked with probability s/t, else takes a token from p_x0 (SUBS), as the reference's ddpm update. Unmasking
does not depend on the model, so the times are drawn first (`mdlm.sampling_law`) and a row runs the model only
at its events, with logits only at the positions it unmasks (the `Denoiser` protocol); every sample of a run is
in flight at once and each call takes up to ``batch_size`` rows whose next event uses the same model.
Calls, row-forwards and head positions are counted per model (executed FLOPs). The law, the caching and
batching rules, precision modes and determinism are in docs/sampler.md.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from tqdm import tqdm

from mdlm.errors import UserError
from mdlm.folded import FoldedDiT, conditions_per_row, foldable
from mdlm.prefixes import check_prefixes, initial_state
from mdlm.sampling_law import SamplerConfig, UnmaskEvents, _splitmix64, batch_noise, draw_tokens, model_of_event_step
from mdlm.schedule import Schedule

NEAR_EVENTS = 2  # `_next_model`'s window, in a row's unmasking intervals (T / L steps, rounded down)

# The denoiser protocol: fn(ids [R, L] long, rows [N] long, pos [N] long) -> raw logits [N, V], row k being the
# logits at position pos[k] of sequence ids[rows[k]]. The sampler asks only for the positions a call uses (the
# positions its rows unmask; the still-masked ones in the final pass), so a DiT runs its output head there only
# (`denoiser_from_model`). Time-agnostic: the prediction may depend on the ids alone.
Denoiser = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class SampleResult:
    """Samples and accounting, rows in increasing sample-index order."""

    sample_indices: np.ndarray   # [N] int64
    token_ids: np.ndarray        # [N, L] int64
    unmask_step: np.ndarray      # [N, L] int32: step that unmasked the position; -1 prefix; T final pass
    prefix_len: np.ndarray       # [N] int64
    final_pass: np.ndarray       # [N] bool: the row went through the noise-removal forward
    aliases: list[str]           # column order of row_forwards / calls
    models: dict[str, str]       # alias -> model name
    row_forwards: np.ndarray     # [N, A] int64, noise-removal pass included
    calls: np.ndarray            # [A] int64 batched forward calls (summed over batches and ranks)
    head_positions: np.ndarray   # [A] int64 positions at which the output head ran (summed like calls)
    last_block_positions: np.ndarray  # [A] int64 positions at which the last block's queries and MLP ran
    conditioning_rows: np.ndarray  # [A] int64 row-forwards that computed the conditioning (0 where folded)
    wall_times: list[float] = field(default_factory=list)  # seconds per ddpm chunk; one entry for ddpm_cache

    def _by_model(self, per_alias: np.ndarray) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for j, alias in enumerate(self.aliases):
            name = self.models[alias]
            out[name] = out.get(name, 0) + per_alias[..., j]
        return out

    def row_forwards_by_model(self) -> dict[str, np.ndarray]:
        """model name -> [N] row-forwards per sample."""
        return self._by_model(self.row_forwards)

    def calls_by_model(self) -> dict[str, int]:
        return {k: int(v) for k, v in self._by_model(self.calls).items()}

    def calls_by_alias(self) -> dict[str, int]:
        return {a: int(c) for a, c in zip(self.aliases, self.calls, strict=True)}

    def row_forwards_by_alias(self) -> dict[str, int]:
        return {a: int(c) for a, c in zip(self.aliases, self.row_forwards.sum(0), strict=True)}

    def head_positions_by_model(self) -> dict[str, int]:
        """model name -> positions at which its output head ran (executed FLOPs = blocks and embeddings per
        row-forward + the final layer per head position)."""
        return {k: int(v) for k, v in self._by_model(self.head_positions).items()}

    def head_positions_by_alias(self) -> dict[str, int]:
        return {a: int(c) for a, c in zip(self.aliases, self.head_positions, strict=True)}

    def last_block_positions_by_model(self) -> dict[str, int]:
        """model name -> positions at which its last block computed queries, attention output and MLP (every
        position of every row-forward, unless the denoiser restricts the last block: `mdlm.folded`)."""
        return {k: int(v) for k, v in self._by_model(self.last_block_positions).items()}

    def conditioning_rows_by_model(self) -> dict[str, int]:
        """model name -> row-forwards that computed the conditioning (adaLN, time MLP): every row-forward,
        unless the denoiser folded it into its weights once (`mdlm.folded`)."""
        return {k: int(v) for k, v in self._by_model(self.conditioning_rows).items()}

    def cost_by_model(self) -> dict[str, dict[str, int]]:
        """model name -> {"calls", "row_forwards", "head_positions", "last_block_positions",
        "conditioning_rows"} totals (the run meta's `per_model`)."""
        calls, heads, last = self.calls_by_model(), self.head_positions_by_model(), self.last_block_positions_by_model()
        cond = self.conditioning_rows_by_model()
        return {name: {"calls": calls[name], "row_forwards": int(rf.sum()), "head_positions": heads[name],
                       "last_block_positions": last[name], "conditioning_rows": cond[name]}
                for name, rf in self.row_forwards_by_model().items()}


# ---- the sampling loops --------------------------------------------------------------------------------


def denoiser_from_model(model: torch.nn.Module) -> Denoiser:
    """The one adapter from a time-agnostic DiT to the denoiser protocol: its head runs at the requested
    positions only. Called with ids alone it returns the full logits [B, L, V]."""
    if getattr(getattr(model, "config", None), "time_conditioning", False):
        raise UserError("the sampler supports time-agnostic models only (config.time_conditioning is true)")
    model.eval()
    return FoldedDiT(model) if foldable(model) else partial(_model_logits, model)  # folded: mdlm/folded.py


def gemm_of(denoiser: Denoiser) -> str:
    """The GEMMs a denoiser runs, for the run record: a folded DiT knows its own (`FoldedDiT.gemm`); any
    other denoiser runs torch's (or its own), named "torch"."""
    return str(getattr(denoiser, "gemm", "torch"))


def gemms_of(denoisers: Mapping[str, Denoiser]) -> dict[str, str]:
    """{model: `gemm_of` its denoiser}: what a run record names as the GEMMs each model ran."""
    return {name: gemm_of(denoiser) for name, denoiser in denoisers.items()}


def _model_logits(model: torch.nn.Module, ids: torch.Tensor, rows: torch.Tensor | None = None,
                  pos: torch.Tensor | None = None) -> torch.Tensor:
    return model(ids, None) if rows is None else model(ids, None, (rows, pos))  # no sigma: time-agnostic


def as_denoiser(fn: Denoiser | torch.nn.Module) -> Denoiser:
    """A model module is wrapped with `denoiser_from_model`; a function is taken to follow the protocol already."""
    return denoiser_from_model(fn) if isinstance(fn, torch.nn.Module) else fn


def _check_logits(logits: torch.Tensor, n: int, mask_id: int) -> None:
    if logits.dim() != 2 or logits.shape[0] != n or logits.shape[1] <= mask_id:
        raise UserError(f"denoiser returned logits of shape {tuple(logits.shape)} for {n} requested positions, "
                        f"expected [{n}, V] with V > mask id {mask_id}")


@dataclass
class _Run:
    """What every call of one sampling run shares: models, randomness, settings, and the tallies it fills."""

    fns: list[Denoiser | None]
    model_of_step: np.ndarray  # [T + 1] alias index per step; entry T = the final pass (the last step's model)
    x: torch.Tensor            # [N, L] state, updated in place
    u_token: np.ndarray        # [N, L]
    race_rows: np.ndarray | None
    mask_id: int
    config: SamplerConfig
    row_forwards: np.ndarray   # [N, A]
    calls: np.ndarray          # [A]
    head_positions: np.ndarray  # [A]
    last_block_positions: np.ndarray  # [A]
    conditioning_rows: np.ndarray  # [A]
    final_pass: np.ndarray     # [N] bool

    @property
    def steps(self) -> int:
        return len(self.model_of_step) - 1

    def call(self, a: int, rows: np.ndarray, local: np.ndarray, pos: np.ndarray) -> torch.Tensor:
        """Logits [n, V] of model a at positions (rows[local[k]], pos[k]) of the current state; tallied."""
        device = self.x.device
        ids = self.x if rows.size == self.x.shape[0] else self.x[torch.from_numpy(rows).to(device)]
        selected = torch.from_numpy(local).to(device)
        logits = self.fns[a](ids, selected, torch.from_numpy(pos).to(device))
        _check_logits(logits, pos.size, self.mask_id)
        self.calls[a] += 1
        self.row_forwards[rows, a] += 1
        self.head_positions[a] += pos.size
        restricted = getattr(self.fns[a], "last_block_positions", None)  # FoldedDiT; a module runs it everywhere
        self.last_block_positions[a] += restricted(selected, ids.shape[0]) if restricted else ids.numel()
        self.conditioning_rows[a] += ids.shape[0] if conditions_per_row(self.fns[a]) else 0
        return logits

    def write(self, logits: torch.Tensor, rows: np.ndarray, pos: np.ndarray, final: np.ndarray) -> None:
        """Tokens at positions (rows[k], pos[k]) from logits [n, V]: a draw, or the argmax where final[k]."""
        device = self.x.device
        tokens = torch.empty(pos.size, dtype=self.x.dtype, device=device)
        draw = ~final
        if draw.any():
            z = logits if draw.all() else logits[torch.from_numpy(draw).to(device)]
            r, p = rows[draw], pos[draw]
            race = None if self.race_rows is None else _splitmix64(self.race_rows[r] + p.astype(np.uint64))
            tokens[torch.from_numpy(draw).to(device)] = draw_tokens(z, self.mask_id, self.u_token[r, p], race,
                                                                    self.config).to(tokens.dtype)
        if final.any():  # noise removal: the most likely real token
            f = torch.from_numpy(final).to(device)
            z = logits[f].clone()
            z[:, self.mask_id] = float("-inf")
            tokens[f] = z.argmax(dim=-1).to(tokens.dtype)
        self.x[torch.from_numpy(rows).to(device), torch.from_numpy(pos).to(device)] = tokens


def _event_calls(run: _Run, events: UnmaskEvents, batch_size: int) -> Iterator[int]:
    """ddpm_cache: run each row's events in order, batching rows whose next event uses the same model; yields
    the number of row events each call advanced.

    Rows need not advance in lockstep: a time-agnostic model's prediction for a row depends only on that row's
    tokens, and every draw's randomness is fixed per (sample, position). So a call may gather rows at any step
    index whose next event uses the same model; the samples and row-forwards are those of the step-synchronous
    loop, in far fewer calls.
    """
    seq_len = run.x.shape[1]
    window = NEAR_EVENTS * run.steps // seq_len  # steps in which a row has ~NEAR_EVENTS events (0: T < L / 2)
    ptr = events.first.copy()  # next group of every row
    active = np.flatnonzero(ptr < events.end)
    while active.size:
        groups = ptr[active]
        model = run.model_of_step[events.step[groups]]
        a = _next_model(model, events.step[groups], window, batch_size)
        rows, groups = active[model == a], groups[model == a]
        if rows.size > batch_size:
            keep = np.sort(np.argsort(events.step[groups], kind="stable")[:batch_size])  # earliest steps
            rows, groups = rows[keep], groups[keep]
        local, grow, pos = events.positions(groups, seq_len)
        logits = run.call(a, rows, local, pos)
        final = events.step[groups] == run.steps
        run.write(logits, grow, pos, np.repeat(final, events.start[groups + 1] - events.start[groups]))
        run.final_pass[rows[final]] = True
        ptr[rows] += 1
        active = active[ptr[active] < events.end[active]]
        yield rows.size


def _next_model(model: np.ndarray, step: np.ndarray, window: int, batch_size: int) -> int:
    """The model that most rows wait on among those whose next event is within ``window`` steps of the
    earliest (ties: the earliest event's model); but a model with a full call waiting (``batch_size`` rows, at
    any step) goes first while the chosen model's earliest event is at most ``window`` steps behind its own.
    The earliest event's model alone keeps rows together through a segment but, where models alternate every
    few steps (interleaved), runs calls for the one or two rows that happen to be first; counting all waiting
    rows strands a segment's last rows (sandwich, 32 samples: 250 calls against 142), and so does a full call
    first without the bound (sandwich: 1228 calls against 977 over four seeds). With the bound, interleaved's light
    calls wait until they fill: 1004 calls against 1062 at T 1000 and 32 samples, no schedule's more
    (`python -m bench.batching_policy`, bench/README.md "Eighth pass" and "Tenth pass")."""
    earliest = int(model[np.argmin(step)])
    near = np.bincount(model[step <= step.min() + window])
    choice = earliest if near[earliest] == near.max() else int(near.argmax())
    full = np.flatnonzero(np.bincount(model) >= batch_size)
    if full.size and choice not in full:
        first = {int(m): int(step[model == m].min()) for m in full}
        candidate = min(first, key=lambda m: (first[m], m))
        if step[model == choice].min() >= first[candidate] - window:
            return candidate
    return choice


def sample_steps(denoiser: Denoiser | torch.nn.Module, x: torch.Tensor,
                 noise: tuple[np.ndarray, np.ndarray, np.ndarray | None], *,
                 start: int, stop: int, steps: int, mask_id: int, config: SamplerConfig) -> torch.Tensor:
    """Run steps [start, stop) of a ``steps``-step (T) run on the rows of ``x`` with one model.

    ``x`` [B, L] is the state after ``start`` steps (all mask at 0); ``noise`` is `batch_noise` of the same
    (seed, sample indices, T). Returns the state after ``stop`` steps, with the final noise-removal pass iff
    stop == T and config.noise_removal. Chaining [0, k) and [k, T), with any model on each, gives the samples of
    `sample` with the schedule that uses those models on those steps: counter-based randomness makes every
    draw independent of what ran before (bit-identical given a batch-invariant model; see the module
    docstring). Only ddpm_cache can skip the steps outside [start, stop). All B rows may share a call.
    """
    tau, u_token, race_rows = noise
    if config.precision == "float32-reference":
        raise UserError("sample_steps: precision float32-reference unmasks by the model; run `sample` instead")
    if config.predictor != "ddpm_cache":
        raise UserError(f"sample_steps: needs the ddpm_cache predictor (got {config.predictor!r})")
    if not 0 <= start <= stop <= steps:
        raise UserError(f"sample_steps: need 0 <= start <= stop <= T, got start {start}, stop {stop}, T {steps}")
    # positions unmasked before `start` are hidden (as prefix tokens are), those unmasking at or after `stop`
    # deferred (never unmasked here, no final pass): the event loop then runs exactly steps [start, stop)
    final = stop == steps and config.noise_removal
    live = np.where((tau < start) | ((tau >= stop) & (stop < steps)), -1, tau)
    rows = x.shape[0]
    run = _Run([as_denoiser(denoiser)], np.zeros(steps + 1, dtype=np.int64), x.clone(), u_token, race_rows,
               mask_id, config, np.zeros((rows, 1), dtype=np.int64), *(np.zeros(1, dtype=np.int64) for _ in range(4)),
               np.zeros(rows, dtype=bool))
    with torch.inference_mode():
        for _ in _event_calls(run, UnmaskEvents.of(live, steps, final), max(1, rows)):
            pass
    return run.x


def _model_fns(denoisers: Mapping[str, Denoiser | torch.nn.Module], schedule: Schedule,
               aliases: list[str]) -> list[Denoiser | None]:
    """The denoiser of each alias (None for an unused alias whose model is not given)."""
    used = [a for a in aliases if schedule.counts[a] > 0]
    missing = sorted({schedule.models[a] for a in used} - set(denoisers))
    if missing:
        raise UserError(f"schedule {schedule.name!r}: no model {', '.join(map(repr, missing))} "
                        f"(have {', '.join(map(repr, denoisers))})")
    return [as_denoiser(denoisers[schedule.models[a]]) if schedule.models[a] in denoisers else None for a in aliases]


def sample(
    denoisers: Mapping[str, Denoiser | torch.nn.Module],
    schedule: Schedule,
    *,
    mask_id: int,
    seq_len: int,
    sample_indices: Sequence[int],
    seed: int,
    config: SamplerConfig = SamplerConfig(),  # noqa: B008 - frozen dataclass, safe default
    batch_size: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> SampleResult:
    """Sample the sequences ``sample_indices`` (any order; returned sorted) with a model schedule.

    ``denoisers`` maps each model name of ``schedule.models`` to a `Denoiser` (or a DiT module, wrapped by
    `denoiser_from_model`). ``batch_size``: the most rows in one model call (default: all). ddpm_cache keeps every
    sample in flight and batches by event; ddpm runs the samples in chunks of ``batch_size`` rows, each chunk
    through every step. ``prefixes[k]`` (optional) are the token ids clamped at positions [0, len) of sample k.
    """
    start = time.perf_counter()
    started, tau, batch_size, fns = _start(denoisers, schedule, mask_id, seq_len, sample_indices, seed, config,
                                           batch_size, prefixes, device)
    run = started.run
    with torch.inference_mode():
        if config.precision == "float32-reference":
            from mdlm.sampler_reference import reference_chunks

            wall = reference_chunks(run, fns, run.model_of_step[:schedule.steps], tau, started.indices, seed,
                                     batch_size, progress, schedule.name)
        elif config.predictor == "ddpm":
            from mdlm.sampler_reference import ddpm_chunks

            wall = ddpm_chunks(run, tau, batch_size, progress, schedule.name, start)
        else:
            events = UnmaskEvents.of(tau, schedule.steps, config.noise_removal)
            with tqdm(total=events.row.size, desc=f"{schedule.name} (row events)", disable=not progress,
                      leave=False, mininterval=1.0) as bar:
                for rows_done in _event_calls(run, events, batch_size):
                    bar.update(rows_done)
            wall = [time.perf_counter() - start]
    return started.result(tau, wall)


def sample_by_call(
    denoisers: Mapping[str, Denoiser | torch.nn.Module],
    schedule: Schedule,
    *,
    mask_id: int,
    seq_len: int,
    sample_indices: Sequence[int],
    seed: int,
    config: SamplerConfig = SamplerConfig(),  # noqa: B008 - frozen dataclass, safe default
    batch_size: int | None = None,
    prefixes: Sequence[Sequence[int]] | None = None,
    device: str | torch.device = "cpu",
) -> Generator[float, None, SampleResult]:
    """`sample` with the ddpm_cache predictor, one model call per step of the generator: it yields the fraction
    of the run's row events done after each call and returns the `SampleResult` (the same samples and counts as
    `sample`), so that several runs can be interleaved (`mdlm.timing` runs them in time slices). Inference mode
    is entered for each call only, never held across a yield."""
    if config.predictor != "ddpm_cache" or config.precision == "float32-reference":
        raise UserError(f"sample_by_call: needs the ddpm_cache predictor and a non-reference precision "
                        f"(got {config.predictor!r}, {config.precision!r})")
    start = time.perf_counter()
    started, tau, batch_size, _ = _start(denoisers, schedule, mask_id, seq_len, sample_indices, seed, config,
                                         batch_size, prefixes, device)
    events = UnmaskEvents.of(tau, schedule.steps, config.noise_removal)
    calls, total, done = _event_calls(started.run, events, batch_size), max(1, events.row.size), 0
    while True:
        with torch.inference_mode():
            rows_done = next(calls, None)
        if rows_done is None:
            return started.result(tau, [time.perf_counter() - start])
        done += rows_done
        yield done / total


@dataclass
class _Started:
    """A run set up by `_start`: its state and what the result needs besides."""

    run: _Run
    indices: np.ndarray
    prefix_len: np.ndarray
    schedule: Schedule

    def result(self, tau: np.ndarray, wall: list[float]) -> SampleResult:
        run = self.run
        return SampleResult(
            sample_indices=self.indices, token_ids=run.x.cpu().numpy().astype(np.int64),
            unmask_step=tau.astype(np.int32), prefix_len=self.prefix_len, final_pass=run.final_pass,
            aliases=list(self.schedule.models), models=dict(self.schedule.models), row_forwards=run.row_forwards,
            calls=run.calls, head_positions=run.head_positions, last_block_positions=run.last_block_positions,
            conditioning_rows=run.conditioning_rows, wall_times=wall,
        )


def _start(denoisers: Mapping[str, Denoiser | torch.nn.Module], schedule: Schedule, mask_id: int, seq_len: int,
           sample_indices: Sequence[int], seed: int, config: SamplerConfig, batch_size: int | None,
           prefixes: Sequence[Sequence[int]] | None, device: str | torch.device
           ) -> tuple[_Started, np.ndarray, int, list[Denoiser | None]]:
    """Checks, the run's randomness (unmasking times [N, L]) and initial state: (run, tau, batch size, models)."""
    config.validate()
    aliases = list(schedule.models)
    fns = _model_fns(denoisers, schedule, aliases)
    model_of_step = model_of_event_step(schedule.step_aliases(), aliases)
    indices = np.array(sorted(int(k) for k in sample_indices), dtype=np.int64)
    if len(set(indices.tolist())) != len(indices) or (indices.size and indices[0] < 0):
        raise UserError("sample indices must be distinct and nonnegative")
    if batch_size is not None and (isinstance(batch_size, bool) or batch_size < 1):
        raise UserError(f"batch size {batch_size}: expected a positive integer")
    batch_size = batch_size or max(1, indices.size)
    n, A = indices.size, len(aliases)
    prefix_len = check_prefixes(prefixes, indices, seq_len, mask_id)
    tau, u_token, race_rows = batch_noise(seed, indices, seq_len, schedule.steps, config)  # [N, L], [N, L], [N]
    x = initial_state(indices, prefixes, prefix_len, tau, seq_len, mask_id)
    run = _Run(fns, model_of_step, x.to(device), u_token, race_rows, mask_id, config,
               np.zeros((n, A), dtype=np.int64), *(np.zeros(A, dtype=np.int64) for _ in range(4)),
               np.zeros(n, dtype=bool))
    return _Started(run, indices, prefix_len, schedule), tau, batch_size, fns
