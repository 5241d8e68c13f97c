"""Where a sampling call's time goes: the folded forward of each tiny-profile model on ``--rows`` rows (one
selected position each, as at T = 1000; random weights, 1 thread), its ops grouped by torch's profiler into
GEMMs (oneDNN's or MKL's, as `mdlm.onednn.sampling_gemm` chooses), attention, LayerNorm and the rest, per call.

It also prints the call's executed FLOP/s (`mdlm.flops.executed_macs`) as a fraction of the one-thread matmul
rate (`bench.common.matmul_peak_flops`), and the **ceiling** of that fraction with these GEMM and attention
kernels: the executed FLOPs over the time of the GEMMs and attention alone, as if every other op (LayerNorm,
GELU, rotary, residual adds, copies) cost nothing. Issue 14's target for a whole sampling run is 70%; a ceiling
below it means no rewrite of the elementwise work can reach it, only faster GEMM or attention kernels.

    PYTHONPATH=. python -m bench.profile_call [--rows 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from bench.common import matmul_peak_flops, random_models, tiny_configs
from mdlm import flops, sampler
from mdlm.folded import conditions_per_row

# GEMMs: oneDNN's linear on an AVX-512 CPU, MKL's (mm, addmm, in-place addmm_) elsewhere (`mdlm.onednn`)
GROUPS = {"mkldnn::_linear_pointwise": "GEMM", "aten::mm": "GEMM", "aten::addmm": "GEMM", "aten::addmm_": "GEMM",
          "aten::_scaled_dot_product_flash_attention_for_cpu": "attention", "aten::native_layer_norm": "LayerNorm"}


def ms_by_group(forward, call: tuple, calls: int) -> dict[str, float]:
    """Profiled self CPU milliseconds per call of ``forward(*call)``, summed by op group (GROUPS, else "rest")."""
    with torch.profiler.profile() as prof:
        for _ in range(calls):
            forward(*call)
    spent: dict[str, float] = {}
    for event in prof.key_averages():
        group = GROUPS.get(event.key, "rest")
        spent[group] = spent.get(group, 0.0) + event.self_cpu_time_total / 1e3 / calls
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--calls", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    call = (torch.randint(2, 8000, (args.rows, 128), generator=gen), torch.arange(args.rows),
            torch.randint(0, 128, (args.rows,), generator=gen))
    peak = matmul_peak_flops()
    for name, model in random_models(tiny_configs()).items():
        forward = sampler.denoiser_from_model(model)
        for _ in range(5):
            forward(*call)
        start = time.perf_counter()
        for _ in range(args.calls):
            forward(*call)
        wall = (time.perf_counter() - start) / args.calls * 1e3
        spent = ms_by_group(forward, call, args.calls)
        total = sum(spent.values())
        parts = ", ".join(f"{g} {ms:.1f} ms ({ms / total:.0%})" for g, ms in sorted(spent.items(), key=lambda x: -x[1]))
        print(f"{name}, {args.rows} rows: {wall:.1f} ms a call (unprofiled); profiled: {parts}")
        gflop = call_gflop(model.backbone.config, forward, args.rows)
        # the kernels' share of the profiled call, applied to the unprofiled wall time (the profiler adds its own)
        kernels = (spent.get("GEMM", 0.0) + spent.get("attention", 0.0)) / total * wall
        print(f"  executed {gflop:.2f} GFLOP a call: {gflop / wall * 1e3:.1f} GFLOP/s, "
              f"{gflop / wall * 1e12 / peak:.0%} of the matmul rate {peak / 1e9:.1f} GFLOP/s; ceiling with these "
              f"GEMM and attention kernels (every other op free): {gflop / kernels * 1e12 / peak:.0%}")


def call_gflop(config, forward, rows: int) -> float:
    """Executed GFLOPs of one call on ``rows`` rows with one selected position each (`mdlm.flops`)."""
    run = flops.SampledRun(path="profile_call", rows=rows, steps=1, noise_removal=False, row_forwards={"m": rows},
                           head_positions={"m": rows}, last_block_positions={"m": rows},
                           conditioning_rows={"m": rows if conditions_per_row(forward) else 0})
    return 2 * flops.executed_macs(run, {"m": config})[0]["m"] / 1e9


if __name__ == "__main__":
    main()
