"""The folded sampling-time DiT computes the module's function (fp32 rounding apart)."""

import pytest
import torch

from mdlm import sampler
from mdlm.folded import FoldedDiT, foldable, query_slots
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
    # the same (row, position) twice: equal up to the GEMM's rounding, which may depend on where a row sits in
    # the call (MKL's kernels on an AVX2 CPU round the two copies differently)
    assert (got[0] - got[4]).abs().max().item() <= 1e-5


def test_one_selection_per_row_matches_the_module():
    """The common case at T = 1000 (one position per row, rows in order) takes `query_slots`' fast path."""
    model = random_model()
    ids = torch.randint(0, 97, (4, 24))
    rows, pos = torch.arange(4), torch.tensor([7, 0, 23, 12])
    with torch.no_grad():
        full = model(ids)
    folded = FoldedDiT(model)
    assert (folded(ids, rows, pos) - full[rows, pos]).abs().max().item() <= 1e-5
    assert folded.last_block_positions(rows, 4) == 4


@pytest.mark.parametrize(("rows", "pos", "positions", "slot"), [
    ([0, 1, 2], [5, 0, 9], [[5], [0], [9]], [0, 0, 0]),  # one per row, in order (the fast path)
    ([2, 0, 0], [4, 8, 1], [[8, 1], [0, 0], [4, 0]], [0, 0, 1]),  # row 1 none, row 0 two: padded with 0
    ([1, 0, 2], [3, 6, 2], [[6], [3], [2]], [0, 0, 0]),  # one per row, out of order (the general path)
])
def test_query_slots_by_hand(rows, pos, positions, slot):
    got_positions, got_slot = query_slots(torch.tensor(rows), torch.tensor(pos), 3)
    assert got_positions.tolist() == positions and got_slot.tolist() == slot
    assert FoldedDiT.last_block_positions(torch.tensor(rows), 3) == 3 * len(positions[0])


@pytest.mark.parametrize("onednn", [True, False])
@pytest.mark.parametrize("rows_per_chunk", [1, 2, 5])
def test_rows_in_chunks_give_the_logits_of_one_pass(monkeypatch, rows_per_chunk, onednn):
    """The forward runs a few rows at a time (cache-sized chunks); a partial last chunk included, the logits
    are those of all rows at once and of the module, on the oneDNN path and on the fallback."""
    import mdlm.folded

    model = random_model()
    ids = torch.randint(0, 97, (5, 24))
    folded = FoldedDiT(model)
    folded.onednn = onednn and folded.onednn
    one_pass = folded(ids)  # smoke sizes: all 5 rows fit one chunk
    key = "onednn" if folded.onednn else "passes"
    monkeypatch.setitem(mdlm.folded._CHUNK_BYTES, key, rows_per_chunk * 24 * folded.gelu_b.numel() * 4)
    chunked = folded(ids)
    with torch.no_grad():
        expected = model(ids)
    assert (chunked - one_pass).abs().max().item() <= 1e-6
    assert (chunked - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("capability", "onednn"), [("AVX512", True), ("AVX512_BF16", True), ("AVX2", False),
                                                    ("DEFAULT", False)])
def test_the_gemm_path_follows_the_cpu(monkeypatch, capability, onednn):
    """The CPU build the suite pins has oneDNN; the sampling forward runs its GEMMs there (the GELU fused) on a
    CPU with AVX-512 only, and MKL's elsewhere."""
    assert torch.backends.mkldnn.is_available()
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    folded = FoldedDiT(random_model())
    assert folded.onednn is onednn
    # the run record's name for them (`sampler.gemm_of`, written to each samples meta file)
    assert sampler.gemm_of(folded) == ("onednn" if onednn else "mkl")
    assert sampler.gemm_of(lambda ids, rows=None, pos=None: ids) == "torch"  # a denoiser the suite did not fold


@pytest.mark.parametrize("onednn", [True, False])
def test_both_gemm_paths_compute_the_module(onednn):
    """oneDNN's GEMMs (the tanh GELU as fc1's epilogue) and the fallback (MKL's in-place GEMMs, the GELU as
    passes) give the module's logits, in full and at selected positions."""
    model = random_model()
    ids = torch.randint(0, 97, (4, 24))
    rows, pos = torch.tensor([0, 0, 3, 1]), torch.tensor([2, 9, 23, 0])
    folded = FoldedDiT(model)
    folded.onednn = onednn
    with torch.no_grad():
        full = model(ids)
    assert (folded(ids) - full).abs().max().item() <= 1e-5
    assert (folded(ids, rows, pos) - full[rows, pos]).abs().max().item() <= 1e-5


def test_fused_gelu_is_the_tanh_approximation():
    """oneDNN's GELU epilogue against torch's tanh GELU of the same linear in float64, over a wide range."""
    from mdlm.onednn import LINEAR_POINTWISE

    torch.manual_seed(0)
    x, w, b = torch.randn(64, 16) * 3, torch.randn(40, 16), torch.randn(40)
    got = LINEAR_POINTWISE(x, w, b, "gelu", [], "tanh")
    u = torch.nn.functional.linear(x.double(), w.double(), b.double())
    assert u.abs().max() > 10  # both tails and the bend
    expected = torch.nn.functional.gelu(u, approximate="tanh")
    # fp32 rounding of the GEMM, relative to |u|; the erf GELU is 5e-4 away from the tanh one here
    assert ((got.double() - expected).abs() / u.abs().clamp(min=1)).max().item() <= 1e-5


def test_gelu_is_the_tanh_approximation():
    """The GELU as passes, u * sigmoid(2z), against torch's tanh GELU in float64 over a wide range."""
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
