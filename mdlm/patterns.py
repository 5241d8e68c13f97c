"""Coarse light/heavy placements as letter patterns, and sampling many patterns with common random numbers.

The T denoising steps are cut into K equal segments; a *placement* puts the light model on N of them and the
heavy model on the rest, written as a K-letter pattern in sampling order (``LHHHHHHL`` for K = 8 is the
paper's sandwich L125, H750, L125 at T = 1000).

Prefix sharing. With the sampler's counter-based random numbers, two schedules that agree on steps [0, k)
reach bit-identical states at step k. The patterns therefore form a trie of segment prefixes, traversed depth
first: each distinct prefix is sampled once and its end state is the start state of all its children (K = 8,
N = 2: 120 segment runs instead of 29 x 8 = 232). This needs `mdlm.sampler.sample_steps` (the `ddpm_cache`
predictor); for `ddpm`, or with ``traversal="full"``, every pattern is sampled from scratch with
`mdlm.sampler.sample`; the samples are the same either way (tested).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mdlm import sampler as sampler_mod
from mdlm.errors import UserError
from mdlm.sampling_law import SamplerConfig, batch_noise
from mdlm.schedule import DEFAULT_MODELS, Schedule

HEAVY, LIGHT = "H", "L"  # pattern letters = the default schedule aliases (H: heavy, L: light)


def placements(segments: int, light: int) -> list[tuple[int, ...]]:
    """Every choice of ``light`` light segments among ``segments`` (lexicographic): C(K, N) tuples."""
    if isinstance(segments, bool) or not isinstance(segments, int) or segments < 1:
        raise UserError(f"search segments {segments!r}: expected a positive integer")
    if isinstance(light, bool) or not isinstance(light, int) or not 1 <= light <= segments:
        raise UserError(f"search light {light!r}: expected an integer in [1, segments = {segments}]")
    return list(itertools.combinations(range(segments), light))


def pattern_of(light_segments: Sequence[int], segments: int) -> str:
    """(0, 7), 8 -> 'LHHHHHHL'."""
    chosen = set(light_segments)
    return "".join(LIGHT if k in chosen else HEAVY for k in range(segments))


def light_segments_of(pattern: str) -> tuple[int, ...]:
    return tuple(k for k, c in enumerate(pattern) if c == LIGHT)


def baseline_of(patterns: Sequence[str]) -> str:
    """The all-heavy pattern among ``patterns`` (every comparison's baseline)."""
    found = [p for p in patterns if LIGHT not in p]
    if not found:
        raise UserError("placements: no all-heavy pattern among the scores")
    return found[0]


def check_steps(steps: int, segments: int) -> int:
    """Steps per segment; T must split into K equal segments (so every placement has N*T/K light steps)."""
    if steps % segments:
        raise UserError(f"search: {steps} steps do not split into {segments} equal segments; "
                        f"choose segments dividing the step count")
    return steps // segments


def pattern_schedule(pattern: str, steps: int, name: str | None = None, description: str = "") -> Schedule:
    """The schedule of a pattern at T steps, consecutive equal letters merged ('LHHHHHHL' -> L125,H750,L125)."""
    seg = check_steps(steps, len(pattern))
    runs = [(letter, len(list(group)) * seg) for letter, group in itertools.groupby(pattern)]
    return Schedule.from_segments(name or f"search-{pattern}", runs, steps, description=description)


def trie_available(config: SamplerConfig) -> bool:
    """The trie needs ddpm_cache: `sampler.sample_steps` (ddpm runs the model at every step, so it cannot skip)."""
    return config.predictor == "ddpm_cache"


def prefix_count(patterns: Sequence[str]) -> int:
    """Distinct non-empty prefixes = segment runs of the trie traversal."""
    return len({p[:d] for p in patterns for d in range(1, len(p) + 1)})


def planned_runs(segments: int, light: int, config: SamplerConfig, traversal: str = "auto") -> int:
    """Progress units of `sample_patterns` for all-heavy plus every placement: segment runs or whole patterns."""
    patterns = [HEAVY * segments] + [pattern_of(c, segments) for c in placements(segments, light)]
    if not trie_available(config) or traversal == "full":
        return len(patterns)
    return prefix_count(patterns)


@dataclass
class Traversal:
    mode: str  # "trie" or "full"
    segment_runs: int  # segment-length sampling runs executed (per batch of samples)
    full_runs: int  # what sampling every placement from scratch costs: placements x K


def sample_patterns(
    denoisers: Mapping[str, sampler_mod.Denoiser],
    patterns: Sequence[str],
    *,
    steps: int,
    mask_id: int,
    seq_len: int,
    sample_indices: Sequence[int],
    seed: int,
    config: SamplerConfig,
    batch_size: int | None = None,
    traversal: str = "auto",
    progress: Callable[[str], None] | None = None,
) -> tuple[dict[str, np.ndarray], Traversal]:
    """Token ids [N, L] (rows in increasing sample index) of every pattern, with common random numbers.

    ``denoisers``: {"heavy": fn, "light": fn} as for `mdlm.sampler.sample`. ``traversal``: "trie", "full",
    or "auto" (trie when the predictor allows it).
    """
    patterns = list(dict.fromkeys(patterns))
    if not patterns:
        raise UserError("search: no placements to sample")
    K = len(patterns[0])
    if any(len(p) != K or set(p) - {HEAVY, LIGHT} for p in patterns):
        raise UserError(f"search: patterns must be {K} letters of H/L, got {patterns}")
    check_steps(steps, K)
    config.validate()
    if traversal not in ("auto", "trie", "full"):
        raise UserError(f"search traversal {traversal!r}: expected auto, trie or full")
    if traversal == "trie" and not trie_available(config):
        raise UserError(f"search traversal trie: needs the ddpm_cache predictor (got {config.predictor!r})")
    use_trie = traversal == "trie" or (traversal == "auto" and trie_available(config))
    full_runs = len(patterns) * K
    if use_trie:
        tokens = _sample_trie(denoisers, patterns, steps=steps, mask_id=mask_id, seq_len=seq_len,
                              sample_indices=sample_indices, seed=seed, config=config, batch_size=batch_size,
                              progress=progress)
        return tokens, Traversal("trie", prefix_count(patterns), full_runs)
    tokens = {}
    for p in patterns:
        if progress:
            progress(p)
        result = sampler_mod.sample(denoisers, pattern_schedule(p, steps), mask_id=mask_id, seq_len=seq_len,
                                    sample_indices=sample_indices, seed=seed, config=config, batch_size=batch_size)
        tokens[p] = result.token_ids
    return tokens, Traversal("full", full_runs, full_runs)


def _visit(prefix: str, x: torch.Tensor, children: Mapping[str, list[str]], fns, noise, seg: int,
           steps: int, mask_id: int, config, chunks: dict[str, list[np.ndarray]], progress) -> None:
    """Depth first: x is the state after the segments of ``prefix``; each child segment is sampled once."""
    depth = len(prefix)
    if depth * seg == steps:
        chunks[prefix].append(x.numpy().astype(np.int64))
        return
    for letter in sorted(children[prefix]):
        if progress:
            progress(prefix + letter)
        nxt = sampler_mod.sample_steps(fns[letter], x, noise, start=depth * seg, stop=(depth + 1) * seg,
                                       steps=steps, mask_id=mask_id, config=config)
        _visit(prefix + letter, nxt, children, fns, noise, seg, steps, mask_id, config, chunks, progress)


def _sample_trie(denoisers, patterns, *, steps, mask_id, seq_len, sample_indices, seed, config, batch_size,
                 progress) -> dict[str, np.ndarray]:
    K = len(patterns[0])
    seg = steps // K
    fns = {letter: denoisers[DEFAULT_MODELS[letter]] for letter in {c for p in patterns for c in p}}
    indices = np.array(sorted(int(k) for k in sample_indices), dtype=np.int64)
    if indices.size == 0 or len(set(indices.tolist())) != indices.size or indices[0] < 0:
        raise UserError("sample indices must be distinct, nonnegative and not empty")
    batch_size = batch_size or indices.size
    chunks: dict[str, list[np.ndarray]] = {p: [] for p in patterns}
    children: dict[str, list[str]] = {}
    for p in patterns:
        for d in range(K):
            children.setdefault(p[:d], [])
            if p[d] not in children[p[:d]]:
                children[p[:d]].append(p[d])

    with torch.inference_mode():
        for b in range(0, indices.size, batch_size):  # the sampler's batching, so calls see the same rows
            idx = indices[b:b + batch_size]
            noise = batch_noise(seed, idx, seq_len, steps, config)  # as `sampler.sample` draws it
            x0 = torch.full((idx.size, seq_len), mask_id, dtype=torch.long)
            _visit("", x0, children, fns, noise, seg, steps, mask_id, config, chunks, progress)
    return {p: np.concatenate(chunks[p]) for p in patterns}
