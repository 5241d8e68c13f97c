"""The public Python API, for notebooks and scripts (the pipeline's commands use the same library underneath).

    import mdlm
    profile = mdlm.load_profile("tiny")                  # params.yaml, validated
    models = mdlm.load_models(profile)                   # {"heavy": MDLM, "light": MDLM}, hash-verified
    schedule = mdlm.load_schedule("sandwich", steps=100)
    result = mdlm.sample(models, schedule, profile, num_samples=2)
    heavy = mdlm.sample(models, mdlm.load_schedule("all-heavy", steps=100), profile, num_samples=2)
    savings = mdlm.flops_saved(models, schedule, result, baseline=heavy)
    scores = mdlm.judge_texts(result.texts, profile)

Everything not exported from `mdlm` is internal and may change between versions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdlm import schedule as _schedule
from mdlm.checkpoints import load_model, load_pair
from mdlm.config import Profile
from mdlm.profiles import load_profile
from mdlm.sampler import SampleResult, denoiser_from_model
from mdlm.sampler import sample as _sample
from mdlm.sampling_law import SamplerConfig
from mdlm.schedule import Schedule

__all__ = ["Generated", "Profile", "Schedule", "flops_saved", "judge_texts", "load_model", "load_models",
           "load_profile", "load_schedule", "sample"]


@dataclass
class Generated:
    """Samples of one schedule: the decoded texts and the sampler's full record (ids, call counts)."""

    texts: list[str]
    result: SampleResult

    @property
    def token_ids(self) -> np.ndarray:
        return self.result.token_ids


def load_models(profile: Profile, device: str = "cpu") -> dict[str, torch.nn.Module]:
    """The heavy and light models of ``profile`` (a shipped pair is verified against its sha256 manifest)."""
    return {name: m.to(device).eval() for name, m in load_pair(profile.name, profile.checkpoints, device).items()}


def load_schedule(name_or_path: str | Path, steps: int) -> Schedule:
    """A schedule file, or the name of one in schedules/ (``sandwich``), resolved for ``steps`` steps."""
    return _schedule.load_schedule(_schedule.resolve_schedule_path(name_or_path), steps)


def sample(models: Mapping[str, torch.nn.Module], schedule: Schedule, profile: Profile, *,
           num_samples: int | None = None, seed: int | None = None, first_index: int = 0) -> Generated:
    """Sample ``num_samples`` sequences (indices first_index..) with ``schedule``; settings from ``profile``."""
    from mdlm.tokenizers import get_tokenizer

    settings = profile.sample
    tokenizer = get_tokenizer(profile.tokenizer)
    n = settings.num_samples if num_samples is None else num_samples
    result = _sample({name: denoiser_from_model(m) for name, m in models.items()}, schedule,
                     mask_id=int(tokenizer.mask_id), seq_len=profile.data.seq_len,
                     sample_indices=range(first_index, first_index + n),
                     seed=settings.seed if seed is None else seed, config=SamplerConfig.from_settings(settings),
                     batch_size=settings.batch_size)
    return Generated(tokenizer.batch_decode([row.tolist() for row in result.token_ids]), result)


def flops_saved(models: Mapping[str, torch.nn.Module], schedule: Schedule, generated: Generated | None = None,
                baseline: Generated | None = None) -> dict[str, float]:
    """Fraction of FLOPs ``schedule`` saves vs all-heavy: `blocks_only` (transformer blocks, the paper's
    accounting) and `full` (every forward op); with its samples and an all-heavy run on the same sample indices
    and seed (``baseline``), also `executed`: what the sampler actually ran (head only where a step used it)."""
    from mdlm.flops import analytic_macs, executed_accounting, schedule_savings

    configs = {name: m.config for name, m in models.items()}
    savings = schedule_savings(schedule.model_steps, {name: analytic_macs(c) for name, c in configs.items()})
    out = {"blocks_only": savings["blocks_only_saving"], "full": savings["full_saving"]}
    if generated is not None and baseline is not None:
        out["executed"] = executed_accounting(_run(generated, schedule), configs, _run(baseline, schedule))["saving"]
    return out


def _run(generated: Generated, schedule: Schedule):
    from mdlm.flops import SampledRun

    result = generated.result
    return SampledRun(path="api", rows=int(result.sample_indices.size), steps=schedule.steps, noise_removal=True,
                      row_forwards={k: int(v.sum()) for k, v in result.row_forwards_by_model().items()},
                      head_positions={k: int(v) for k, v in result.head_positions_by_model().items()},
                      last_block_positions=result.last_block_positions_by_model(),
                      conditioning_rows=result.conditioning_rows_by_model())


def judge_texts(texts: Sequence[str], profile: Profile) -> dict[str, Any]:
    """Corpus gen-PPL of ``texts`` under the profile's judge (offline SmolLM2 for `tiny`), with a 95% interval."""
    import math

    from mdlm.judge import scorer
    from mdlm.stats import bootstrap_ci

    score, identity = scorer(profile.evaluate, profile.tokenizer)
    nll_sum, n_tokens = score(list(texts))
    ci = bootstrap_ci(nll_sum, n_tokens, B=profile.evaluate.bootstrap, seed=profile.evaluate.seed)
    return {"gen_ppl": math.exp(ci.point), "gen_ppl_ci": (math.exp(ci.low), math.exp(ci.high)),
            "num_tokens": int(np.sum(n_tokens)), **identity}

