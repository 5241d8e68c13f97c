"""Sizes, model builders and the shared results of the benchmarks (imported by conftest and the benchmarks)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from mdlm.config import Profile
from mdlm.model import MDLM, DiTConfig, model_config
from mdlm.onednn import LINEAR_POINTWISE
from mdlm.profiles import load_profile
from mdlm.tokenizers import MODEL_VOCAB

ROOT = Path(__file__).resolve().parents[1]
PROFILE = "tiny"
BATCH = 8  # forward and sampler-step benchmarks
SAMPLING_ROWS = 16  # rows per sampler call of the tiny profile (sample.batch_size)
SCHEDULE_T = 24  # whole-schedule runs: every shipped schedule resolves at T = 24 (sandwich-10's L5% is 1 step)
SCHEDULE_BATCH = 4
MASK_ID = 1  # bpe-8k's [MASK]

# Derived numbers, filled by the benchmarks in run order (forward -> step -> schedules), printed at the end.
SUMMARY: dict[str, Any] = {"forward_s": {}, "forward_flops": {}, "step": {}, "schedules": {}, "whole_run": {},
                           "reference": {}}


def tiny_profile() -> Profile:
    return load_profile(PROFILE, ROOT / "params.yaml")


def tiny_configs() -> dict[str, DiTConfig]:
    profile = tiny_profile()
    vocab = MODEL_VOCAB[profile.tokenizer]
    return {w: model_config(profile.model, w, vocab, profile.data.seq_len) for w in ("heavy", "light")}


def threads() -> int:
    """The tiny profile's `train.num_threads`; `MDLM_BENCH_THREADS` overrides it (see bench/README.md)."""
    return int(os.environ.get("MDLM_BENCH_THREADS") or tiny_profile().train.num_threads)


def random_models(configs: dict[str, DiTConfig], seed: int = 0) -> dict[str, MDLM]:
    """Models in eval mode with every parameter ~ N(0, 0.02²): the zero-init adaLN and head are overwritten,
    so activations look like a trained model's rather than all-zero."""
    out = {}
    gen = torch.Generator().manual_seed(seed)
    for which, cfg in configs.items():
        model = MDLM(cfg).eval()
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
        out[which] = model
    return out


def min_median(benchmark) -> tuple[float, float] | None:
    """(min, median) seconds of a finished benchmark, None when benchmarks are disabled."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or not getattr(stats, "stats", None) or not stats.stats.data:
        return None
    return stats.stats.min, stats.stats.median


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    """FLOP/s of the best of several n^3 fp32 matmuls at the current thread count (the machine's matmul rate),
    through torch's default GEMM (MKL) and through oneDNN, whichever is faster: the sampler's GEMMs run in
    oneDNN, which on an AMD EPYC project machine ran at about twice MKL's rate."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    gemms = [lambda: a @ b]
    if LINEAR_POINTWISE is not None:
        b_rows = b.t().contiguous()  # oneDNN's linear takes the weight as [out, in]
        gemms.append(lambda: LINEAR_POINTWISE(a, b_rows, None, "none", [], ""))
    best = float("inf")
    for gemm in gemms:
        gemm()  # warm-up
        for _ in range(repeats):
            t0 = time.perf_counter()
            gemm()
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best
