"""Log-linear noise, SUBS and the NELBO of the reference implementation, with fixed logits standing in for a model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mdlm.diffusion import (
    NEG_INF,
    LogLinearNoise,
    antithetic_times,
    forward_mask,
    loss_at_t,
    nelbo,
    subs_log_probs,
    token_nll,
)

pytestmark = pytest.mark.usefixtures("one_thread")

V, MASK, B, L = 11, 10, 4, 9


class FixedLogits(torch.nn.Module):
    """A "model" whose logits [B, L, V] are a parameter and do not depend on x_t."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = torch.nn.Parameter(logits.clone())

    def forward(self, ids, sigma=None, select=None):
        out = self.logits * 1.0  # a fresh tensor, as a real forward returns
        return out if select is None else out[select]


@pytest.fixture
def data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randint(0, V - 1, (B, L), generator=g)  # real tokens only
    logits = 3 * torch.randn(B, L, V, generator=g)
    return x0, logits


def reference_nll(logits: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """float64 cross-entropy over the real tokens (the mask column removed), [B, L]."""
    real = logits.double()[..., :MASK]  # MASK is the last id here
    return F.cross_entropy(real.reshape(-1, MASK), x0.reshape(-1), reduction="none").view(x0.shape)


# ------------------------------------------------------------------------------------------------------------
# noise schedule


def test_log_linear_schedule_float64():
    noise = LogLinearNoise()
    t = torch.linspace(1e-3, 1, 101, dtype=torch.float64)
    sigma = noise.total_noise(t)
    assert torch.allclose(1 - torch.exp(-sigma), noise.mask_prob(t), rtol=1e-12, atol=0)
    assert torch.allclose(noise.mask_prob(t), (1 - 1e-3) * t, rtol=1e-12, atol=0)
    assert noise.total_noise(torch.tensor(1.0, dtype=torch.float64)).item() == pytest.approx(6.907755, abs=1e-6)
    tt = t.clone().requires_grad_()
    (grad,) = torch.autograd.grad(noise.total_noise(tt).sum(), tt)
    assert torch.allclose(noise.rate(t), grad, rtol=1e-12)
    assert torch.allclose(noise.loss_weight(t), 1 / t, rtol=1e-9, atol=0)


def test_loss_weight_is_one_over_t_in_fp32():
    t = antithetic_times(256, 1e-3, torch.Generator().manual_seed(0))
    assert t.dtype == torch.float32
    assert torch.allclose(LogLinearNoise().loss_weight(t), 1 / t, rtol=2e-5, atol=0)


@pytest.mark.parametrize("batch", [1, 2, 7, 64])
def test_antithetic_times_are_stratified_over_eps_1(batch):
    eps = 1e-3
    for seed in range(5):
        t = antithetic_times(batch, eps, torch.Generator().manual_seed(seed)).double()
        assert t.shape == (batch,) and t.min() >= eps and t.max() <= 1
        # exactly one time in each of the B equal strata of [eps, 1]
        lo = eps + (1 - eps) * torch.arange(batch, dtype=torch.float64) / batch
        assert torch.all(t.sort().values >= lo - 1e-6) and torch.all(t.sort().values <= lo + (1 - eps) / batch + 1e-6)
    a = antithetic_times(8, eps, torch.Generator().manual_seed(3))
    assert torch.equal(a, antithetic_times(8, eps, torch.Generator().manual_seed(3)))
    assert not torch.equal(a, antithetic_times(8, eps, torch.Generator().manual_seed(4)))


def test_antithetic_times_are_uniform_on_average():
    g = torch.Generator().manual_seed(0)
    t = torch.cat([antithetic_times(3, 1e-3, g) for _ in range(4000)])
    assert t.mean().item() == pytest.approx((1 + 1e-3) / 2, abs=0.01)
    hist = torch.histc(t, bins=10, min=1e-3, max=1.0) / len(t)
    assert torch.all((hist - 0.1).abs() < 0.015)


def test_forward_mask_rate_and_reproducibility():
    x0 = torch.randint(0, MASK, (2, 20000), generator=torch.Generator().manual_seed(0))
    t = torch.tensor([0.25, 0.9])
    x_t = forward_mask(x0, t, MASK, LogLinearNoise(), torch.Generator().manual_seed(1))
    frac = (x_t == MASK).double().mean(-1)
    assert torch.allclose(frac, (1 - 1e-3) * t.double(), atol=0.01)
    kept = x_t != MASK
    assert torch.equal(x_t[kept], x0[kept])  # masking only replaces tokens by the mask
    assert torch.equal(x_t, forward_mask(x0, t, MASK, LogLinearNoise(), torch.Generator().manual_seed(1)))


# ------------------------------------------------------------------------------------------------------------
# SUBS


def test_subs_invariants(data):
    x0, logits = data
    x_t = forward_mask(x0, torch.full((B,), 0.5), MASK, LogLinearNoise(), torch.Generator().manual_seed(2))
    masked = x_t == MASK
    assert masked.any() and (~masked).any()
    before = logits.clone()
    lp = subs_log_probs(logits, x_t, MASK)
    assert torch.equal(logits, before)  # the caller's logits are not modified
    assert lp.dtype == torch.float32
    # masked rows: a distribution over the real tokens, the mask never predicted
    assert torch.all(lp[masked][:, MASK] <= NEG_INF / 2)
    assert torch.allclose(lp[masked].exp().sum(-1), torch.ones(int(masked.sum())), atol=1e-6)
    assert torch.allclose(lp[masked][:, :MASK].double(), torch.log_softmax(logits[masked][:, :MASK].double(), -1),
                          atol=1e-5)
    # unmasked rows: one-hot log-probs at the observed token (carry-over)
    rows = lp[~masked]
    assert torch.all(rows.gather(-1, x_t[~masked][:, None]) == 0)
    onehot = F.one_hot(x_t[~masked], V).bool()
    assert torch.all(rows[~onehot] == NEG_INF)


def test_subs_keeps_float64():
    x_t = torch.full((1, 3), MASK)
    lp = subs_log_probs(torch.randn(1, 3, V, dtype=torch.float64), x_t, MASK)
    assert lp.dtype == torch.float64
    assert lp.exp().sum(-1).sub(1).abs().max() < 1e-12


def test_token_nll_is_minus_subs_log_prob_of_x0(data):
    x0, logits = data
    x_t = forward_mask(x0, torch.full((B,), 0.6), MASK, LogLinearNoise(), torch.Generator().manual_seed(3))
    nll = token_nll(FixedLogits(logits), x0, x_t, MASK)
    via_subs = -subs_log_probs(logits, x_t, MASK).gather(-1, x0[..., None]).squeeze(-1)
    assert torch.allclose(nll, via_subs, atol=1e-5)
    masked = x_t == MASK
    assert torch.all(nll[~masked] == 0)
    assert torch.allclose(nll[masked].double(), reference_nll(logits, x0)[masked], atol=1e-5)


# ------------------------------------------------------------------------------------------------------------
# loss


def test_all_masked_loss(data):
    x0, logits = data
    t = torch.tensor([0.2, 0.4, 0.6, 1.0])
    x_t = torch.full_like(x0, MASK)
    nll = token_nll(FixedLogits(logits), x0, x_t, MASK)
    loss = (nll * LogLinearNoise().loss_weight(t)[:, None]).mean()
    expected = (reference_nll(logits, x0) / t.double()[:, None]).mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_no_mask_loss_is_exactly_zero(data):
    x0, logits = data
    model = FixedLogits(logits)
    nll = token_nll(model, x0, x0.clone(), MASK)
    assert torch.all(nll == 0)
    # nelbo at t = eps: a seed under which nothing is masked gives a loss of exactly 0, and zero gradients
    g_seed = next(s for s in range(100) if not (forward_mask(
        x0, torch.full((B,), 1e-3), MASK, LogLinearNoise(), torch.Generator().manual_seed(s)) == MASK).any())
    loss = nelbo(model, x0, MASK, t=torch.full((B,), 1e-3), generator=torch.Generator().manual_seed(g_seed))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(model.logits.grad == 0)


def test_carry_over_tokens_contribute_nothing(data):
    """Changing the logits at unmasked positions changes neither the loss nor gets any gradient."""
    x0, logits = data
    x_t = forward_mask(x0, torch.full((B,), 0.5), MASK, LogLinearNoise(), torch.Generator().manual_seed(5))
    masked = x_t == MASK
    t = torch.full((B,), 0.5)
    model = FixedLogits(logits)
    loss = (token_nll(model, x0, x_t, MASK) * LogLinearNoise().loss_weight(t)[:, None]).mean()
    loss.backward()
    assert torch.all(model.logits.grad[~masked] == 0)
    assert torch.all(model.logits.grad[masked][:, MASK] == 0)  # nor does the mask column
    assert model.logits.grad[masked].abs().sum() > 0
    other = logits.clone()
    other[~masked] = 100 * torch.randn_like(other[~masked])
    loss2 = (token_nll(FixedLogits(other), x0, x_t, MASK) * LogLinearNoise().loss_weight(t)[:, None]).mean()
    assert loss2.item() == loss.item()


def test_nelbo_matches_its_definition(data):
    x0, logits = data
    model = FixedLogits(logits)
    t = torch.tensor([0.1, 0.3, 0.7, 0.95])
    loss = nelbo(model, x0, MASK, t=t, generator=torch.Generator().manual_seed(7))
    x_t = forward_mask(x0, t, MASK, LogLinearNoise(), torch.Generator().manual_seed(7))
    masked = (x_t == MASK).double()
    expected = (reference_nll(logits, x0) * masked / t.double()[:, None]).mean()  # mean over all B*L tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    again = nelbo(model, x0, MASK, generator=torch.Generator().manual_seed(8))
    assert again.item() == nelbo(model, x0, MASK, generator=torch.Generator().manual_seed(8)).item()


def test_loss_at_t_scores_two_models_on_the_same_x_t(data):
    x0, logits = data
    a, b = FixedLogits(logits), FixedLogits(logits.flip(-1))
    ra = loss_at_t(a, x0, 0.5, MASK, generator=torch.Generator().manual_seed(9))
    rb = loss_at_t(b, x0, 0.5, MASK, generator=torch.Generator().manual_seed(9))
    assert torch.equal(ra["x_t"], rb["x_t"])  # same generator state -> same masked inputs
    rb2 = loss_at_t(b, x0, 0.5, MASK, x_t=ra["x_t"])  # or pass the first model's x_t explicitly
    assert torch.equal(rb2["nll"], rb["nll"]) and torch.equal(rb2["masked"], rb["masked"])
    masked = ra["x_t"] == MASK
    assert torch.equal(ra["masked"], masked.sum(-1))
    for model_logits, r in ((logits, ra), (logits.flip(-1), rb)):
        expected = (reference_nll(model_logits, x0) * masked).sum(-1)
        assert torch.allclose(r["nll"].double(), expected, atol=1e-4)
    assert not torch.allclose(ra["nll"], rb["nll"])
