"""Glue shared by several commands: from a validated profile to the library objects they run on."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from mdlm.config import EvaluateSettings, Profile

ScoreFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # texts -> (nll_sum [N], n_tokens [N])


def add_profile_argument(parser) -> None:
    parser.add_argument("--profile", help="profile of params.yaml (default: the file's `profile` key)")


def judge_markers(profile: Profile, settings: EvaluateSettings) -> tuple[str, str | None]:
    """The MDLM's (EOS, BOS) strings in decoded text: the evaluate settings, else the tokenizer's."""
    from mdlm.judge import markers_for

    eos_default, bos_default = markers_for(profile.tokenizer)
    return settings.eos_text or eos_default, settings.bos_text or bos_default


def judge_scorer(profile: Profile) -> tuple[ScoreFn, dict[str, Any]]:
    """The profile's judge as a function of decoded texts, and the judge's identity for records."""
    from mdlm.judge import load_judge, score_samples

    settings = profile.evaluate
    eos_text, bos_text = judge_markers(profile, settings)
    judge = load_judge(settings.judge)

    def score(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        s = score_samples(judge, list(texts), batch_size=settings.batch_size, eos_text=eos_text, bos_text=bos_text)
        return s.nll_sum, s.n_tokens

    return score, {"judge": judge.name, "judge_sha256": judge.sha256, "eos_text": eos_text, "bos_text": bos_text}


def sampler_config(profile: Profile, **overrides: Any):
    """The sampler settings of the profile's `sample:` section (keyword overrides: None keeps)."""
    from mdlm.sampler import SamplerConfig

    s = profile.sample
    values = dict(predictor=s.predictor, precision=s.precision, top_p=s.top_p, noise_removal=s.noise_removal)
    values.update({k: v for k, v in overrides.items() if v is not None})
    config = SamplerConfig(**values)
    config.validate()
    return config


def profile_models(profile: Profile, device: str = "cpu") -> dict[str, Any]:
    """The profile's heavy and light models (verified when shipped), in eval mode on ``device``."""
    from mdlm.checkpoints import load_pair

    return {name: m.to(device).eval() for name, m in load_pair(profile.name, profile.checkpoints, device).items()}


def profile_denoisers(profile: Profile, device: str = "cpu") -> dict[str, Any]:
    """The profile's models as sampler denoisers, keyed by model name (`heavy`, `light`)."""
    from mdlm.errors import UserError
    from mdlm.sampler import denoiser_from_model

    denoisers = {}
    for name, model in profile_models(profile, device).items():
        try:
            denoisers[name] = denoiser_from_model(model)
        except UserError as exc:
            raise UserError(f"model {name!r} of profile {profile.name!r}: {exc}") from None
    return denoisers
