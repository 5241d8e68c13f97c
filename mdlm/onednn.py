"""oneDNN's fp32 linear for CPU inference: the GEMMs of the sampling forward and of the judge.

Why. torch's default fp32 GEMM on CPU is MKL's, and MKL does not use its AVX-512 kernels on AMD CPUs: on the
AMD EPYC kind of project machine with AVX-512 it ran the suite's shapes at about 90 GFLOP/s on one core, oneDNN (which
chooses its kernels by instruction set, not vendor) at about 200. oneDNN's linear is the op torch's own CPU
compiler emits for `nn.Linear`, optionally with a pointwise epilogue (`folded` fuses the tanh GELU there).
It is the same arithmetic as `F.linear` up to fp32 rounding (another kernel sums in another order).

Where. oneDNN's edge comes from its AVX-512 kernels. On a CPU without AVX-512 (an AVX2 AMD EPYC, Zen 3, kind
of project machine) MKL's GEMM ran the sampling forward about a fifth faster than oneDNN's (the judge's forward
took the same time in either; bench/README.md, "Twelfth pass"), so the sampling forward takes its GEMMs from
`sampling_gemm`: oneDNN where the CPU has AVX-512, MKL elsewhere. The choice depends on the machine only,
never on a timing, so a machine gives the same samples run after run; two kinds of machine may differ in a
token, as any change of kernel may (the same oneDNN code on AVX-512 and AVX2 machines gave two different
samples files of seven).

Inference only: the op has no autograd formula, so `linear` falls back to `F.linear` whenever a gradient
could be needed, off the CPU, or for another dtype.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# None in a torch build without oneDNN; callers then use torch's own GEMMs
LINEAR_POINTWISE = (getattr(torch.ops.mkldnn, "_linear_pointwise", None)
                    if torch.backends.mkldnn.is_available() else None)


def cpu_capability() -> str:
    """The instruction set torch's CPU kernels use here ("AVX512", "AVX2", "DEFAULT", ...)."""
    return torch.backends.cpu.get_cpu_capability()


def sampling_gemm(capability: str | None = None) -> str:
    """The GEMMs of the sampling forward on this machine: "onednn" where this build has oneDNN's linear and the
    CPU has AVX-512 (``capability``: torch's CPU capability string, read here when None), else "mkl"."""
    if LINEAR_POINTWISE is None:
        return "mkl"
    if capability is None:
        capability = cpu_capability()
    return "onednn" if capability.upper().startswith("AVX512") else "mkl"


def usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when oneDNN's linear can compute x @ weight.T here: this build has it, fp32 on the CPU, no grad."""
    return (LINEAR_POINTWISE is not None and x.device.type == "cpu" and x.dtype == weight.dtype == torch.float32
            and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad)))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``, in oneDNN where `usable` (weight [out, in], any leading dims of x)."""
    if usable(x, weight) and weight.is_contiguous():
        return LINEAR_POINTWISE(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class Linear(torch.nn.Linear):
    """`nn.Linear` whose forward runs `linear` (same parameters, same state dict)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return linear(x, self.weight, self.bias)


def use_for_linears(model: torch.nn.Module) -> int:
    """Make every plain `nn.Linear` of ``model`` a `Linear`, in place (its parameters, tied or not, are kept);
    returns how many. Subclasses of `nn.Linear` are left alone: their forward may do more than the GEMM."""
    swapped = 0
    for module in model.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = Linear
            swapped += 1
    return swapped
