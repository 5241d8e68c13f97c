"""One training step (forward, NELBO, backward, clip, AdamW, EMA) against the CPU's fp32 matmul peak.

Sizes: the tiny profile's heavy model (12 blocks), batch 16, dropout 0. The step's FLOP/s use the analytic
count of `mdlm.flops` (2 FLOPs per MAC, training = 3 x forward), so `fraction_of_matmul_peak` is a model-FLOPs
utilization: the head really runs at the masked positions only (about half), which `executed_fraction_of_peak`
accounts for. The peak is the best
of several 2048^3 fp32 matmuls measured in the same run, with the same thread count, before and after the step.
"""

from __future__ import annotations

import torch

from bench.common import matmul_peak_flops, min_median, threads, tiny_configs
from mdlm.diffusion import LogLinearNoise, token_nll
from mdlm.flops import analytic_macs
from mdlm.model import MDLM
from mdlm.train import EMA, masked_batch, step_generator

BATCH, MASK_ID = 16, 1  # bpe-8k's mask id


def test_train_step(benchmark):
    cfg = tiny_configs()["heavy"]
    cfg.dropout = 0.0
    L, V = cfg.length, cfg.vocab_size
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
    macs = analytic_macs(cfg, batch=BATCH)
    train_flops = 3 * 2 * macs.total
    executed = 3 * 2 * (macs.total - (1 - masked_frac) * macs.head)
    benchmark.extra_info.update(batch=BATCH, length=L, hidden=cfg.hidden_size, blocks=cfg.n_blocks, vocab=V,
                                threads=threads(),
                                train_flops=train_flops, masked_fraction=masked_frac,
                                matmul_peak_gflops_per_s=peak / 1e9)
    times = min_median(benchmark)
    if times is None:  # --benchmark-disable
        return
    rate = train_flops / times[0]
    benchmark.extra_info.update(train_gflops_per_s=rate / 1e9, fraction_of_matmul_peak=rate / peak,
                                executed_fraction_of_peak=executed / times[0] / peak,
                                tokens_per_s=BATCH * L / times[0])
