"""One training step (forward, NELBO, backward, clip, AdamW, EMA) against the CPU's fp32 matmul peak.

Sizes: hidden 192, 12 blocks, 3 heads, L 128, vocab 8192, batch 16, dropout 0. The step's FLOP/s use the analytic
count (2 FLOPs per MAC, training = 3 x forward, forward per sequence = blocks' linear layers 12 d^2 L + attention
2 L^2 d per block + head d V L), so `fraction_of_matmul_peak` is a model-FLOPs utilization: the head really runs
at the masked positions only (about half), which `executed_fraction_of_peak` accounts for. The peak is the best
of several 2048^3 fp32 matmuls measured in the same run, with the same thread count, before and after the step.
"""

from __future__ import annotations

import time

import torch

from bench.common import min_median, threads
from mdlm.diffusion import LogLinearNoise, token_nll
from mdlm.model import MDLM, DiTConfig
from mdlm.train import EMA, masked_batch, step_generator

D, BLOCKS, HEADS, L, V, BATCH, MASK_ID = 192, 12, 3, 128, 8192, 16, 1


def matmul_peak_flops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def analytic_forward_flops(d: int, n_blocks: int, length: int, vocab: int, head_fraction: float = 1.0) -> float:
    """FLOPs of one sequence's forward (2 per MAC); `head_fraction` of the positions go through the head."""
    blocks = n_blocks * (12 * d * d * length + 2 * length * length * d)
    return 2 * (blocks + head_fraction * d * vocab * length)


def test_train_step(benchmark):
    cfg = DiTConfig(vocab_size=V, hidden_size=D, n_blocks=BLOCKS, n_heads=HEADS, cond_dim=128, length=L, dropout=0.0)
    torch.manual_seed(0)
    model = MDLM(cfg).train()
    with torch.no_grad():  # timings do not depend on the values; this just avoids all-zero gates and logits
        for p in model.parameters():
            p.normal_(0, 0.02)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
    ema, noise = EMA(model, 0.999), LogLinearNoise()
    x0 = torch.randint(2, V, (BATCH, L), generator=torch.Generator().manual_seed(0))
    x_t, t = masked_batch(x0, step_generator(0, 0, x0.device), MASK_ID, noise)

    def step() -> float:
        loss = (token_nll(model, x0, x_t, MASK_ID) * noise.loss_weight(t)[:, None]).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model)
        return loss.item()

    peak = matmul_peak_flops()
    loss = benchmark.pedantic(step, rounds=5, iterations=1, warmup_rounds=1)
    peak = max(peak, matmul_peak_flops())
    assert torch.isfinite(torch.tensor(loss))

    masked_frac = (x_t == MASK_ID).float().mean().item()
    train_flops = 3 * BATCH * analytic_forward_flops(D, BLOCKS, L, V)
    executed = 3 * BATCH * analytic_forward_flops(D, BLOCKS, L, V, head_fraction=masked_frac)
    benchmark.extra_info.update(batch=BATCH, length=L, hidden=D, blocks=BLOCKS, vocab=V, threads=threads(),
                                train_flops=train_flops, masked_fraction=masked_frac,
                                matmul_peak_gflops_per_s=peak / 1e9)
    times = min_median(benchmark)
    if times is None:  # --benchmark-disable
        return
    rate = train_flops / times[0]
    benchmark.extra_info.update(train_gflops_per_s=rate / 1e9, fraction_of_matmul_peak=rate / peak,
                                executed_fraction_of_peak=executed / times[0] / peak,
                                tokens_per_s=BATCH * L / times[0])
