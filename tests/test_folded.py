"""The folded sampling-time DiT computes the module's function (fp32 rounding apart)."""

import pytest
import torch

from mdlm import sampler
from mdlm.folded import FoldedDiT, foldable
from mdlm.model import MDLM, DiTConfig


def random_model(**overrides) -> MDLM:
    """A DiT whose adaLN layers are not zero (the default init makes every shift/scale/gate 0, which would hide
    a wrong fold) and whose biases are non-zero."""
    torch.manual_seed(0)
    cfg = DiTConfig(**{**dict(vocab_size=97, hidden_size=32, n_blocks=3, n_heads=2, cond_dim=16, length=24,
                              dropout=0.0), **overrides})
    model = MDLM(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model


def test_full_logits_match_the_module():
    model = random_model()
    ids = torch.randint(0, 97, (5, 24))
    with torch.no_grad():
        expected = model(ids)
    got = FoldedDiT(model)(ids)
    assert got.shape == expected.shape
    assert expected.std() > 0.5  # the adaLN terms and gates are far from the identity block
    assert (got - expected).abs().max().item() <= 1e-5


def test_selected_positions_match_the_module_in_order_with_repeats():
    model = random_model()
    ids = torch.randint(0, 97, (4, 24))
    rows = torch.tensor([3, 0, 0, 2, 3])
    pos = torch.tensor([23, 0, 5, 11, 23])
    with torch.no_grad():
        full = model(ids)
    got = FoldedDiT(model)(ids, rows, pos)
    assert got.shape == (5, 97)
    assert (got - full[rows, pos]).abs().max().item() <= 1e-5
    assert torch.equal(got[0], got[4])


@pytest.mark.parametrize("rows_per_chunk", [1, 2, 5])
def test_rows_in_chunks_give_the_logits_of_one_pass(monkeypatch, rows_per_chunk):
    """The forward runs a few rows at a time (L2-sized chunks); a partial last chunk included, the logits are
    those of all rows at once and of the module."""
    import mdlm.folded

    model = random_model()
    ids = torch.randint(0, 97, (5, 24))
    folded = FoldedDiT(model)
    one_pass = folded(ids)  # smoke sizes: all 5 rows fit one chunk
    monkeypatch.setattr(mdlm.folded, "_CHUNK_BYTES", rows_per_chunk * 24 * folded.gelu_b.numel() * 4)
    chunked = folded(ids)
    with torch.no_grad():
        expected = model(ids)
    assert (chunked - one_pass).abs().max().item() <= 1e-6
    assert (chunked - expected).abs().max().item() <= 1e-5


def test_gelu_is_the_tanh_approximation():
    """The folded GELU, u * sigmoid(2z), against torch's tanh GELU in float64 over a wide range."""
    folded = FoldedDiT(random_model())
    u = torch.linspace(-12, 12, 4 * 32 * 3).view(3, 4 * 32)
    got = torch.addcmul(folded.gelu_b, u, u, value=folded.gelu_a).mul_(u).sigmoid_().mul_(u)
    expected = torch.nn.functional.gelu(u.double(), approximate="tanh")
    assert (got.double() - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("overrides, autocast", [({"time_conditioning": True}, False), ({}, True)])
def test_time_conditioned_or_autocast_models_are_not_folded(overrides, autocast):
    model = random_model(**overrides)
    model.backbone.autocast = autocast
    assert not foldable(model)
    with pytest.raises(ValueError, match="time-agnostic DiT without autocast"):
        FoldedDiT(model)


def test_the_sampler_adapter_folds_plain_models_only():
    plain, autocast = random_model(), random_model()
    autocast.backbone.autocast = True
    assert isinstance(sampler.denoiser_from_model(plain), FoldedDiT)
    assert not isinstance(sampler.denoiser_from_model(autocast), FoldedDiT)
