"""GPU check for when a GPU is lent: owt-size heavy and light forwards in bf16, MFU, sandwich wall-clock saving.

    python bench/gpu_check.py [--device cuda] [--batch 8] [--length 1024] [--out gpu_check.json]

One short run (well under 5 minutes on one H100/H200): it measures the bf16 matmul peak on this device,
times the heavy (12-block) and light (4-block) mdlm-owt-size forwards under the reference precision regions
(bf16 autocast over blocks and head, fp32 norms and residual stream), reports each forward's model-FLOP
utilisation against the measured peak, checks the bf16 logits against an fp32 forward of the same weights,
and times the nominal sandwich (L12.5%, H75%, L12.5% of T forwards) against all-heavy. On CPU it runs the
same code at a small size (`--hidden 128 --length 128`) so that the script itself stays tested.
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from mdlm.flops import analytic_macs
from mdlm.model import MDLM, DiTConfig


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_it(fn, device: torch.device, repeats: int, warmup: int = 2) -> float:
    """Median seconds of `fn()` over `repeats` runs after `warmup` runs."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = time_it(lambda: a @ b, device, repeats=10)
    return 2 * n**3 / seconds


def build(cfg: DiTConfig, device: torch.device, autocast: bool) -> MDLM:
    torch.manual_seed(0)
    model = MDLM(cfg, autocast=autocast)
    for p in model.parameters():  # the zero-initialised adaLN/head would make the output trivially 0
        torch.nn.init.normal_(p, std=0.02)
    return model.to(device).eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--length", type=int, default=1024)
    p.add_argument("--hidden", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--vocab", type=int, default=50258)
    p.add_argument("--steps", type=int, default=1000, help="T of the sandwich timing")
    p.add_argument("--timed-steps", type=int, default=40, help="forwards actually timed per model (scaled to T)")
    p.add_argument("--out", default=None)
    args = p.parse_args()

    device = torch.device(args.device)
    bf16 = device.type == "cuda"
    configs = {which: DiTConfig(vocab_size=args.vocab, hidden_size=args.hidden, n_blocks=blocks,
                                n_heads=args.heads, length=args.length, dropout=0.0)
               for which, blocks in (("heavy", 12), ("light", 4))}
    peak = matmul_peak(device, torch.bfloat16 if bf16 else torch.float32, 8192 if bf16 else 1024)
    ids = torch.randint(0, args.vocab - 1, (args.batch, args.length), device=device)

    result = {"device": torch.cuda.get_device_name(device) if bf16 else platform.processor() or "cpu",
              "torch": torch.__version__, "precision": "bf16 autocast" if bf16 else "fp32",
              "batch": args.batch, "length": args.length, "matmul_peak_tflops": peak / 1e12, "models": {}}
    forward_s = {}
    for which, cfg in configs.items():
        model = build(cfg, device, autocast=bf16)
        with torch.no_grad():
            seconds = time_it(lambda m=model: m(ids), device, repeats=args.timed_steps)
            flops = 2 * analytic_macs(cfg, args.batch, args.length).total
            entry = {"forward_ms": seconds * 1e3, "tflops": flops / seconds / 1e12, "mfu": flops / seconds / peak}
            if bf16:  # the bf16 path must stay close to an fp32 forward of the same weights
                ref = build(cfg, device, autocast=False)(ids[:1]).float()
                got = model(ids[:1]).float()
                entry["bf16_vs_fp32_max_abs"] = (got - ref).abs().max().item()
                entry["bf16_vs_fp32_argmax_agree"] = (got.argmax(-1) == ref.argmax(-1)).float().mean().item()
        forward_s[which] = seconds
        result["models"][which] = entry
        del model
        if bf16:
            torch.cuda.empty_cache()

    n_light = round(0.25 * args.steps)
    heavy_total = args.steps * forward_s["heavy"]
    sandwich_total = (args.steps - n_light) * forward_s["heavy"] + n_light * forward_s["light"]
    blocks_only = 0.25 * (1 - 4 / 12)
    full = 0.25 * (1 - analytic_macs(configs["light"]).total / analytic_macs(configs["heavy"]).total)
    result["sandwich"] = {
        "wall_clock_saving": 1 - sandwich_total / heavy_total,
        "blocks_only_flop_saving": blocks_only,
        "full_flop_saving": full,
        "light_over_heavy_time": forward_s["light"] / forward_s["heavy"],
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
