"""`bench.profile_call`: its op groups name ops that the folded sampling forward really runs."""

import torch

from bench import profile_call
from mdlm import sampler
from mdlm.model import DiT, DiTConfig


def test_every_group_is_found_in_a_folded_call():
    """Were torch to rename an op, its time would land in "rest" and the profile would call it zero."""
    torch.manual_seed(0)
    model = DiT(DiTConfig(vocab_size=64, hidden_size=32, n_blocks=2, n_heads=2, cond_dim=16, length=16,
                          dropout=0.0)).eval()
    forward = sampler.denoiser_from_model(model)
    call = (torch.randint(2, 60, (2, 16)), torch.arange(2), torch.randint(0, 16, (2,)))
    forward(*call)
    spent = profile_call.ms_by_group(forward, call, calls=2)
    assert set(spent) == {"GEMM", "attention", "LayerNorm", "rest"}
    assert all(ms > 0 for ms in spent.values())
