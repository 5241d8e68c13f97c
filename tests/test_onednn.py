"""oneDNN's fp32 linear: the same function as F.linear, inference only, swapped into a model in place."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdlm import onednn


def test_this_build_has_onednns_linear():
    assert onednn.LINEAR_POINTWISE is not None


@pytest.mark.parametrize("shape", [(7, 16), (2, 5, 16)])
@pytest.mark.parametrize("with_bias", [True, False])
def test_linear_is_f_linear_up_to_fp32_rounding(shape, with_bias):
    torch.manual_seed(0)
    x, w = torch.randn(shape), torch.randn(24, 16)
    b = torch.randn(24) if with_bias else None
    expected = F.linear(x.double(), w.double(), None if b is None else b.double())
    got = onednn.linear(x, w, b)
    assert got.shape == (*shape[:-1], 24) and got.dtype == torch.float32
    assert (got.double() - expected).abs().max().item() <= 1e-5


def test_gradients_float64_and_strided_weights_take_torchs_linear():
    x, w = torch.randn(3, 4, requires_grad=True), torch.randn(5, 4)
    assert not onednn.usable(x, w)
    onednn.linear(x, w).sum().backward()  # oneDNN's op has no backward; torch's does
    assert torch.allclose(x.grad, w.sum(0).expand(3, 4))
    with torch.no_grad():
        assert onednn.usable(x, w)  # no gradient can be needed
    assert not onednn.usable(x.detach().double(), w.double())
    w_t = torch.randn(4, 5).t()  # [5, 4], not contiguous
    assert torch.allclose(onednn.linear(x.detach(), w_t), x.detach() @ w_t.t(), atol=1e-6)


class Gated(torch.nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2


def test_use_for_linears_swaps_plain_linears_in_place_and_keeps_tied_weights():
    torch.manual_seed(0)
    emb = torch.nn.Embedding(11, 8)
    model = torch.nn.Sequential(emb, torch.nn.Linear(8, 8), torch.nn.GELU(), Gated(8, 8), torch.nn.Linear(8, 11))
    model[4].weight = emb.weight  # tied, as a judge's head is to its embedding
    ids = torch.randint(0, 11, (3, 5))
    with torch.no_grad():
        before = model(ids)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert onednn.use_for_linears(model) == 2
    assert type(model[1]) is onednn.Linear and type(model[3]) is Gated and type(model[4]) is onednn.Linear
    assert model[4].weight is emb.weight
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    with torch.no_grad():
        assert (model(ids) - before).abs().max().item() <= 1e-5


@pytest.mark.parametrize(("capability", "gemm"), [("AVX512", "onednn"), ("avx512_vnni", "onednn"), ("AVX2", "mkl"),
                                                  ("DEFAULT", "mkl"), ("ZVECTOR", "mkl")])
def test_sampling_gemm_is_onednn_only_with_avx512(capability, gemm):
    assert onednn.sampling_gemm(capability) == gemm


def test_sampling_gemm_without_onednn_is_mkl(monkeypatch):
    monkeypatch.setattr(onednn, "LINEAR_POINTWISE", None)
    assert onednn.sampling_gemm("AVX512") == "mkl"


def test_sampling_gemm_reads_this_cpu(monkeypatch):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX512")
    assert onednn.cpu_capability() == "AVX512" and onednn.sampling_gemm() == "onednn"
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    assert onednn.sampling_gemm() == "mkl"
