"""`bench.profile_call`: its op groups name ops that the folded sampling forward really runs."""

import pytest
import torch

from bench import profile_call
from mdlm import sampler


@pytest.mark.parametrize("onednn", [True, False])
def test_every_group_is_found_in_a_folded_call(toy_dit, onednn):
    """Were torch to rename an op, its time would land in "rest" and the profile would call it zero; on either
    GEMM path (`mdlm.onednn.sampling_gemm`)."""
    forward = sampler.denoiser_from_model(toy_dit(2, 0, 64, 16))
    forward.onednn = onednn
    call = (torch.randint(2, 60, (2, 16)), torch.arange(2), torch.randint(0, 16, (2,)))
    forward(*call)
    spent = profile_call.ms_by_group(forward, call, calls=2)
    assert set(spent) == {"GEMM", "attention", "LayerNorm", "rest"}
    assert all(ms > 0 for ms in spent.values())


def test_call_gflop_of_the_tiny_heavy_model_by_hand():
    """One selected position per row, folded conditioning: per row the 12 blocks (d 128, L 128, MLP ratio 4:
    12 x (12 d^2 L + 2 L^2 d) = 352,321,536 MACs), less the last block's queries, attention output and MLP at
    the 127 unselected positions (127 x (10 d^2 + 2 L d) = 24,969,216), plus the head at one position
    (d V = 1,048,576): 328,400,896 MACs, 2 FLOPs each."""
    from bench.common import tiny_configs
    from mdlm.folded import FoldedDiT

    folded = type("Folded", (), {"computes_conditioning": FoldedDiT.computes_conditioning})()
    assert profile_call.call_gflop(tiny_configs()["heavy"], folded, rows=16) == pytest.approx(
        16 * 2 * 328_400_896 / 1e9, rel=1e-12)
