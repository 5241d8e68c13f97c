"""Benchmark and reproducibility suite for model scheduling in masked diffusion language models.

The public API (`mdlm.api`): `load_profile`, `load_models`, `load_model`, `load_schedule`, `sample`,
`flops_saved`, `judge_texts`, and the types `Profile`, `Schedule`, `Generated`. It is imported on first use,
so `import mdlm` (and the CLI's light commands) do not pay for torch.
"""

__version__ = "0.1.0"

__all__ = ["Generated", "Profile", "Schedule", "flops_saved", "judge_texts", "load_model", "load_models",
           "load_profile", "load_schedule", "sample"]


def __getattr__(name: str):
    if name in __all__:
        from mdlm import api

        return getattr(api, name)
    raise AttributeError(f"module 'mdlm' has no attribute {name!r}")
