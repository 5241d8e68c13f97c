"""One all-heavy whole run (tiny profile's heavy model, random weights; 32 samples, T = 1000, ddpm_cache,
float64, at most 16 rows per call, 1 thread) with the `mdlm` of the current folder; prints seconds, calls and
row-forwards. For a paired comparison with another commit, run it in fresh processes alternated between
the checkouts, e.g. (this file given by its path, so an older checkout needs no copy of it):

    for i in 1 2 3; do
      (cd <this checkout> && PYTHONPATH=. python bench/whole_run.py this)
      (cd <other checkout> && PYTHONPATH=. python <this checkout>/bench/whole_run.py other)
    done
"""

import sys
import time

import torch

from bench.common import random_models, tiny_configs
from mdlm import sampler
from mdlm.schedule import Schedule


def main() -> None:
    torch.set_num_threads(1)
    model = random_models(tiny_configs())["heavy"]
    # older commits took the module itself; newer ones wrap it once, as `mdlm sample` does
    heavy = sampler.denoiser_from_model(model) if hasattr(sampler, "denoiser_from_model") else model
    schedule = Schedule.from_segments("all-heavy", ["H100%"], 1000)
    config = sampler.SamplerConfig(predictor="ddpm_cache", precision="float64", top_p=1.0, noise_removal=True)
    start = time.perf_counter()
    result = sampler.sample({"heavy": heavy}, schedule, mask_id=1, seq_len=128, sample_indices=range(32), seed=0,
                            config=config, batch_size=16)
    label = sys.argv[1] if len(sys.argv) > 1 else "run"
    print(f"{label}: {time.perf_counter() - start:.2f} s, {int(result.calls.sum())} calls, "
          f"{int(result.row_forwards.sum())} row-forwards")


if __name__ == "__main__":
    main()
