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
