"""Glue shared by several commands: the profile's models, loaded and wrapped for the sampler."""

from __future__ import annotations

from typing import Any

from mdlm.config import Profile


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
