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
