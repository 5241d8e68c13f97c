"""The folded sampling forward of this checkout against another's, alternated in one process (paired ratios).

    PYTHONPATH=. python -m bench.compare_forward --against <other checkout> [--rows 3 16] [--rounds 10]

The other checkout's `mdlm/folded.py` is loaded as a module of its own beside this checkout's `mdlm` (its
imports resolve here, so the two must share the model's API). Both fold the same random-weight models of
the tiny profile; calls of ``rows`` rows with one selected position each, as at T = 1000. Per round, each
forward runs 5 timed calls after one untimed, the order alternating between rounds; the ratio is this
checkout's time over the other's, per round. Prints ms per row-forward and the paired ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import time
from pathlib import Path

import torch

from bench.common import random_models, tiny_configs
from mdlm.folded import FoldedDiT


def load_other(checkout: Path):
    path = checkout / "mdlm" / "folded.py"
    if not path.is_file():
        raise SystemExit(f"{path}: no folded forward in that checkout")
    spec = importlib.util.spec_from_file_location("other_folded", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def per_row_ms(forward, args, rows: int) -> float:
    forward(*args)
    start = time.perf_counter()
    for _ in range(5):
        forward(*args)
    return (time.perf_counter() - start) / 5 / rows * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", type=Path, required=True, help="the other checkout's root folder")
    parser.add_argument("--rows", type=int, nargs="+", default=[3, 16])
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    torch.set_num_threads(1)
    other = load_other(args.against)
    models = random_models(tiny_configs())
    gen = torch.Generator().manual_seed(0)
    for rows in args.rows:
        call = (torch.randint(2, 8000, (rows, 128), generator=gen), torch.arange(rows),
                torch.randint(0, 128, (rows,), generator=gen))
        for name, model in models.items():
            ours, theirs = FoldedDiT(model), other.FoldedDiT(model)
            diff = (ours(*call) - theirs(*call)).abs().max().item()
            mine, old = [], []
            for r in range(args.rounds):
                pair = [(ours, mine), (theirs, old)]
                for forward, times in pair if r % 2 == 0 else pair[::-1]:
                    times.append(per_row_ms(forward, call, rows))
            ratios = sorted(a / b for a, b in zip(mine, old, strict=True))
            print(f"{name} {rows} rows: other {statistics.median(old):.3f}, this {statistics.median(mine):.3f} "
                  f"ms per row-forward; paired ratio median {statistics.median(ratios):.3f} "
                  f"[{ratios[0]:.3f}, {ratios[-1]:.3f}]; logits differ by {diff:.1e}")


if __name__ == "__main__":
    main()
