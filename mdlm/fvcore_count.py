"""The independent MAC count of a DiT forward: fvcore traces a real `MDLM` forward and counts what ran.

`mdlm.flops` counts MACs analytically and uses this as its cross-check. fvcore (`FlopCountAnalysis`, one unit
per MAC) skips `aten::scaled_dot_product_attention` by default, so it gets a handle here, and its LayerNorm
estimate is switched off, because a LayerNorm is not a MAC (it was 1.5% of a block at the smoke width). The
traced MACs are grouped by module into the analytic count's parts: the blocks without their adaLN, the
output layer without its adaLN, and the rest (conditioning).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import asdict
from typing import NamedTuple

from mdlm.errors import UserError
from mdlm.model import DiTConfig

SDPA_OP = "aten::scaled_dot_product_attention"
LAYER_NORM_OP = "aten::layer_norm"


class TracedMacs(NamedTuple):
    """MACs of one traced forward by part, and the ops fvcore saw but has no formula for."""

    blocks: int
    head: int
    other: int
    uncounted: tuple[str, ...]


def _sdpa_macs(inputs, outputs) -> int:
    """fvcore handle: q [.., Lq, E], k [.., Lk, E], v [.., Lk, Ev] -> prod(..)·Lq·Lk·(E + Ev) MACs."""
    from fvcore.nn.jit_handles import get_shape

    q, k, v = (get_shape(x) for x in inputs[:3])
    return math.prod(q[:-2]) * q[-2] * k[-2] * (q[-1] + v[-1])


def _no_macs(inputs, outputs) -> int:
    """fvcore handle of ops that are not multiply-accumulates (its `None` handle would not replace a default)."""
    return 0


def select_mask(batch: int, length: int, positions: int):
    """A bool mask [batch, length] with ``positions`` True entries spread over the rows (round-robin)."""
    import torch

    if not 0 <= positions <= batch * length:
        raise UserError(f"select: {positions} positions do not fit a [{batch}, {length}] batch")
    mask = torch.zeros(batch, length, dtype=torch.bool)
    k = torch.arange(positions)
    mask[k % batch, (k // batch * 7) % length] = True  # a stride co-prime to most L: not one contiguous run
    if int(mask.sum()) != positions:  # the stride revisited a position (L divisible by 7): fall back
        mask.zero_()
        mask.view(-1)[:positions] = True
    return mask


def traced_macs(cfg: DiTConfig, batch: int, length: int, selected: int | None = None) -> TracedMacs:
    """MACs of `MDLM(cfg)` on a [batch, length] input, traced by fvcore (cached per config in a process).

    ``selected``: trace `model(ids, None, select=mask)` with that many head positions (`select_mask`).
    """
    return _traced(tuple(sorted(asdict(cfg).items())), batch, length, selected)


@functools.lru_cache(maxsize=16)
def _traced(key: tuple, batch: int, length: int, selected: int | None) -> TracedMacs:
    import torch

    from mdlm.model import MDLM

    cfg = DiTConfig(**dict(key))
    with warnings.catch_warnings():
        # fvcore relies on deprecated TorchScript tracing; the warnings say so on import and on every trace
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        from fvcore.nn import FlopCountAnalysis

        with torch.random.fork_rng(devices=[]):  # random init must not move the caller's RNG
            torch.manual_seed(0)
            model = MDLM(cfg).eval()
        ids = torch.zeros(batch, length, dtype=torch.long)  # values do not matter, shapes do
        inputs = (ids,) if selected is None else (ids, None, select_mask(batch, length, selected))
        # MACs only, as the analytic count: attention through SDPA counted, LayerNorm (not MACs) ignored
        fca = FlopCountAnalysis(model, inputs).set_op_handle(SDPA_OP, _sdpa_macs, LAYER_NORM_OP, _no_macs)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        with torch.no_grad():
            by_module = fca.by_module()
            uncounted = tuple(sorted(fca.unsupported_ops()))
    blocks = sum(by_module[f"backbone.blocks.{i}"] - by_module[f"backbone.blocks.{i}.adaLN_modulation"]
                 for i in range(cfg.n_blocks))
    head = by_module["backbone.output_layer"] - by_module["backbone.output_layer.adaLN_modulation"]
    return TracedMacs(blocks=blocks, head=head, other=by_module[""] - blocks - head, uncounted=uncounted)
