"""Masked diffusion: the log-linear noise process, the SUBS parameterization and the continuous-time NELBO.

Notation: x0 clean tokens [B, L]; t in (0, 1] the diffusion time; x_t has each token replaced by the mask
with probability (1 - eps) * t. The NELBO weight for the log-linear schedule is dsigma/expm1(sigma) = 1/t.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

NEG_INF = -1e6  # the reference's "minus infinity": finite, so that 0 * NEG_INF stays 0


@dataclass(frozen=True)
class LogLinearNoise:
    eps: float = 1e-3

    def total_noise(self, t: torch.Tensor) -> torch.Tensor:
        """sigma(t) = -log(1 - (1 - eps) t)."""
        return -torch.log1p(-(1 - self.eps) * t)

    def rate(self, t: torch.Tensor) -> torch.Tensor:
        """dsigma/dt."""
        return (1 - self.eps) / (1 - (1 - self.eps) * t)

    def mask_prob(self, t: torch.Tensor) -> torch.Tensor:
        """1 - exp(-sigma(t)) = (1 - eps) t."""
        return (1 - self.eps) * t

    def loss_weight(self, t: torch.Tensor) -> torch.Tensor:
        """dsigma / expm1(sigma); exactly 1/t for this schedule."""
        sigma = self.total_noise(t)
        return self.rate(t) / torch.expm1(sigma)


def subs_log_probs(logits: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """SUBS: never predict the mask; unmasked positions carry over their token with log-prob 0.

    logits: [B, L, V] raw backbone output; x_t: [B, L]. Returns log-probs [B, L, V] in fp32, or in the
    dtype of `logits` if wider (float64 sampling must not be rounded through fp32). `logits` is not modified.
    """
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32), copy=True)
    logits[..., mask_id] += NEG_INF
    log_probs = logits - torch.logsumexp(logits, dim=-1, keepdim=True)
    unmasked = x_t != mask_id  # [B, L]
    carry = torch.full_like(log_probs[0, 0], NEG_INF)  # [V]
    log_probs[unmasked] = carry
    log_probs[unmasked, x_t[unmasked]] = 0.0
    return log_probs


def forward_mask(x0: torch.Tensor, t: torch.Tensor, mask_id: int, noise: LogLinearNoise,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample x_t: mask each token of x0 [B, L] independently with probability (1 - eps) t[b]."""
    p = noise.mask_prob(t)[:, None]  # [B, 1]
    u = torch.rand(x0.shape, generator=generator, device=x0.device)
    return torch.where(u < p, torch.full_like(x0, mask_id), x0)


def antithetic_times(batch: int, eps: float, generator: torch.Generator | None = None,
                     device=None) -> torch.Tensor:
    """Stratified times: one uniform offset, shifted by i/B for each example, mapped onto [eps, 1]."""
    u = torch.rand(1, generator=generator, device=device)
    strata = (u + torch.arange(batch, device=device) / batch) % 1.0
    return (1 - eps) * strata + eps


def token_nll(model, x0: torch.Tensor, x_t: torch.Tensor, mask_id: int) -> torch.Tensor:
    """-log p_theta(x0 | x_t) per token [B, L]; exactly 0 at unmasked (carried-over) positions."""
    masked = x_t == mask_id  # [B, L]
    logits = model(x_t, select=masked).float()  # [N, V]: the head runs at masked positions only
    logits[:, mask_id] = NEG_INF  # SUBS: the mask is never predicted (the addmm output may be edited in place)
    nll_masked = torch.logsumexp(logits, dim=-1) - logits.gather(-1, x0[masked][:, None]).squeeze(-1)  # [N]
    nll = torch.zeros(x0.shape, dtype=nll_masked.dtype, device=x0.device)
    nll[masked] = nll_masked
    return nll  # [B, L]


def nelbo(model, x0: torch.Tensor, mask_id: int, noise: LogLinearNoise = LogLinearNoise(),
          generator: torch.Generator | None = None, antithetic: bool = True,
          t: torch.Tensor | None = None) -> torch.Tensor:
    """Continuous-time NELBO per token (nats), averaged over all B*L tokens of x0 [B, L].

    Equivalent to SUBS: the masked-position log-probs are the log-softmax with the mask column removed,
    carried-over positions contribute exactly 0. Pass `t` [B] to evaluate at given times.
    """
    B = x0.shape[0]
    if t is None:
        t = (antithetic_times(B, noise.eps, generator, x0.device) if antithetic
             else (1 - noise.eps) * torch.rand(B, generator=generator, device=x0.device) + noise.eps)
    x_t = forward_mask(x0, t, mask_id, noise, generator)
    nll = token_nll(model, x0, x_t, mask_id)  # [B, L]
    return (nll * noise.loss_weight(t)[:, None]).mean()


@torch.no_grad()
def loss_at_t(model, x0: torch.Tensor, t: float, mask_id: int, noise: LogLinearNoise = LogLinearNoise(),
              generator: torch.Generator | None = None, x_t: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Masked-token cross-entropy at a fixed time t (the importance analysis calls this per time bin).

    Returns per-sequence sums: `nll` [B] (sum over masked positions), `masked` [B] (their count),
    and the x_t that was used; pass it back as `x_t` to score a second model on the same masked inputs.
    """
    if x_t is None:
        tt = torch.full((x0.shape[0],), float(t), device=x0.device)
        x_t = forward_mask(x0, tt, mask_id, noise, generator)
    nll = token_nll(model, x0, x_t, mask_id)
    masked = (x_t == mask_id).sum(-1)
    return {"nll": nll.sum(-1), "masked": masked, "x_t": x_t}
