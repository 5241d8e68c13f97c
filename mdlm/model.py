"""The MDLM denoiser: a DiT backbone with the module and parameter names of the mdlm-owt checkpoint.

Read top to bottom: config -> norm -> rotary -> time embedding -> block -> final layer -> DiT.
A state dict in the mdlm-owt layout (every key prefixed `backbone.`) loads with strict=True into `MDLM`,
whose only child is `backbone`. The backbone returns raw logits; SUBS is applied in `mdlm.diffusion`.

Precision: on CPU everything runs in fp32. On GPU, `autocast=True` mirrors the reference regions:
blocks and output head under bf16 autocast, LayerNorms forced to fp32, residual stream kept in fp32.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from mdlm.config import ModelSettings

# Positions at which the output head runs: a bool mask [B, L], or (rows [N], pos [N]) long index tensors.
Select = torch.Tensor | tuple[torch.Tensor, torch.Tensor]

# ------------------------------------------------------------------------------------------------------------
# config


@dataclass
class DiTConfig:
    vocab_size: int = 50258  # real tokens + the mask token (last id for GPT-2)
    hidden_size: int = 768
    n_blocks: int = 12
    n_heads: int = 12
    cond_dim: int = 128
    length: int = 1024
    mlp_ratio: int = 4
    dropout: float = 0.1
    time_conditioning: bool = False  # mdlm-owt: off, so the model sees only x_t

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiTConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# Named sizes of the reference (configs/model/*.yaml); the light variant keeps the width, 4 blocks.
SIZES: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=512, n_blocks=8, n_heads=8),
    "small": dict(hidden_size=768, n_blocks=12, n_heads=12),  # = mdlm-owt
    "medium": dict(hidden_size=1024, n_blocks=24, n_heads=16),
}
LIGHT_BLOCKS = 4


def size_config(name: str, vocab_size: int = 50258, light: bool = False, **overrides) -> DiTConfig:
    """`size_config("small")` is mdlm-owt; `light=True` gives the same width with 4 blocks."""
    cfg = dict(SIZES[name], vocab_size=vocab_size, **overrides)
    if light:
        cfg["n_blocks"] = LIGHT_BLOCKS
    return DiTConfig(**cfg)


def model_config(model: ModelSettings, which: str, vocab_size: int, length: int) -> DiTConfig:
    """The heavy or light config of a profile's `model:` section, for sequences of ``length`` tokens."""
    return DiTConfig(
        vocab_size=vocab_size,
        hidden_size=model.hidden,
        n_blocks=model.blocks(which),
        n_heads=model.heads,
        cond_dim=model.cond_dim,
        length=length,
        dropout=model.dropout,
        time_conditioning=model.time_conditioning,
    )


# ------------------------------------------------------------------------------------------------------------
# building blocks


class LayerNorm(nn.Module):
    """Affine-free LayerNorm computed in fp32, times a learned weight (no bias)."""

    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = F.layer_norm(x.float(), (self.dim,))
        return x * self.weight  # any leading dims: [B, L, d] or the gathered [N, d]


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    # x: [B, L, d]; shift, scale: [B, 1, d]
    return x * (1 + scale) + shift


class Rotary(nn.Module):
    """Rotary position embedding, GPT-NeoX "rotate half" (dims j and j + head_dim/2 form a pair)."""

    def __init__(self, head_dim: int, base: float = 10_000.0):
        super().__init__()
        inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2).float() / head_dim))
        self.register_buffer("inv_freq", inv_freq)  # persistent: the mdlm-owt state dict carries it

    def cos_sin(self, length: int, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        pos = torch.arange(length, device=device, dtype=self.inv_freq.dtype)
        angles = torch.outer(pos, self.inv_freq)  # [L, head_dim/2]
        angles = torch.cat([angles, angles], dim=-1)  # [L, head_dim]
        return angles.cos().to(dtype), angles.sin().to(dtype)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin, with rotate_half(x) = [-x2, x1] for x = [x1, x2].

    x: [B, L, heads, head_dim]; cos, sin: [L, head_dim]. rotate_half(x) * sin is computed as
    roll(x) * [-sin1, sin2]: bit-identical (IEEE negation is exact), and roll's backward is one copy where
    cat + neg + slicing cost five ops; the rotary was the largest non-matmul cost of a CPU training step.
    """
    half = x.shape[-1] // 2
    sin_signed = torch.cat([-sin[:, :half], sin[:, half:]], dim=-1)  # [L, head_dim]
    return x * cos[:, None, :] + x.roll(half, dims=-1) * sin_signed[:, None, :]


class TimestepEmbedder(nn.Module):
    """sigma -> 256 sinusoidal features (cos half first) -> MLP -> [B, cond_dim]."""

    def __init__(self, cond_dim: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))

    def forward(self, sigma: torch.Tensor) -> torch.Tensor:
        half = self.freq_dim // 2
        freqs = torch.exp(-math.log(10_000.0) * torch.arange(half, device=sigma.device).float() / half)
        args = sigma.float()[:, None] * freqs[None]  # [B, half]
        return self.mlp(torch.cat([torch.cos(args), torch.sin(args)], dim=-1))


class EmbeddingLayer(nn.Module):
    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embedding = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.kaiming_uniform_(self.embedding, a=math.sqrt(5))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding[ids]  # [B, L, d]


class DiTBlock(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.n_heads = cfg.n_heads
        self.norm1 = LayerNorm(d)
        self.attn_qkv = nn.Linear(d, 3 * d, bias=False)
        self.attn_out = nn.Linear(d, d, bias=False)
        self.norm2 = LayerNorm(d)
        self.mlp = nn.Sequential(
            nn.Linear(d, cfg.mlp_ratio * d), nn.GELU(approximate="tanh"), nn.Linear(cfg.mlp_ratio * d, d)
        )
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 6 * d)  # adaLN-zero: starts as the identity block
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)
        self.dropout = cfg.dropout

    def forward(self, h: torch.Tensor, c: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, L, d = h.shape
        mod = self.adaLN_modulation(c)[:, None, :]  # [B, 1, 6d]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        p = self.dropout if self.training else 0.0

        a = modulate(self.norm1(h), shift_msa, scale_msa)
        # split (backward: one cat) rather than view + permute + unbind (backward: zero-fill + copies)
        q, k, v = (t.view(B, L, self.n_heads, d // self.n_heads) for t in self.attn_qkv(a).split(d, dim=-1))
        cos, sin = cos.to(q.dtype), sin.to(q.dtype)  # rotary tables in the qkv dtype (bf16 under autocast)
        q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)  # [B, L, heads, head_dim]; v untouched
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                              is_causal=False)  # bidirectional; [B, heads, L, head_dim]
        attn = attn.transpose(1, 2).reshape(B, L, d)
        h = h + gate_msa * F.dropout(self.attn_out(attn), p, self.training)

        m = self.mlp(modulate(self.norm2(h), shift_mlp, scale_mlp))
        return h + gate_mlp * F.dropout(m, p, self.training)


class FinalLayer(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        d = cfg.hidden_size
        self.norm_final = LayerNorm(d)
        self.linear = nn.Linear(d, cfg.vocab_size)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)
        self.adaLN_modulation = nn.Linear(cfg.cond_dim, 2 * d)
        nn.init.zeros_(self.adaLN_modulation.weight)
        nn.init.zeros_(self.adaLN_modulation.bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor, select: Select | None = None) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=-1)  # [B, d] each
        if select is None:
            return self.linear(modulate(self.norm_final(h), shift[:, None], scale[:, None]))  # [B, L, V]
        # only the selected positions, gathered once: [N, d] -> [N, V]. Training needs logits at the masked
        # positions only, sampling at the positions a step unmasks; no [B, L, V] tensor is formed.
        rows, pos = select_indices(select)
        return self.linear(modulate(self.norm_final(h[rows, pos]), shift[rows], scale[rows]))


def select_indices(select: Select) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows [N], pos [N]) long of a `select`: a bool mask [B, L] (row-major order) or such a pair itself."""
    if isinstance(select, torch.Tensor):
        if select.dtype != torch.bool or select.dim() != 2:
            raise ValueError(f"select: expected a bool mask [B, L] or a (rows, pos) pair, got a "
                             f"{select.dtype} tensor of shape {tuple(select.shape)}")
        rows, pos = select.nonzero(as_tuple=True)
        return rows, pos
    rows, pos = select
    if rows.dim() != 1 or rows.shape != pos.shape:
        raise ValueError(f"select: rows and pos must be 1-d of equal length, got {tuple(rows.shape)} and "
                         f"{tuple(pos.shape)}")
    return rows, pos


# ------------------------------------------------------------------------------------------------------------
# the backbone


class DiT(nn.Module):
    def __init__(self, cfg: DiTConfig, autocast: bool = False):
        super().__init__()
        self.config = cfg
        self.autocast = autocast  # bf16 regions of the reference; only meaningful on GPU
        self.vocab_embed = EmbeddingLayer(cfg.vocab_size, cfg.hidden_size)
        self.sigma_map = TimestepEmbedder(cfg.cond_dim)
        self.rotary_emb = Rotary(cfg.head_dim)
        self.blocks = nn.ModuleList([DiTBlock(cfg) for _ in range(cfg.n_blocks)])
        self.output_layer = FinalLayer(cfg)

    def forward(self, ids: torch.Tensor, sigma: torch.Tensor | None = None,
                select: Select | None = None) -> torch.Tensor:
        """ids: [B, L] long; sigma: [B] total noise (ignored unless time_conditioning).

        Returns raw logits [B, L, V]; with `select`, [N, V] at N positions only: the True entries of a bool
        mask [B, L] in row-major order, or positions (rows[k], pos[k]) of a pair of long tensors [N]. The
        blocks run on every position either way (attention needs them); only the head is restricted.
        """
        B, L = ids.shape
        if sigma is None or not self.config.time_conditioning:
            sigma = torch.zeros(B, device=ids.device)  # time-agnostic: c is the (constant) embedding of 0
        h = self.vocab_embed(ids)  # [B, L, d] fp32 residual stream
        c = F.silu(self.sigma_map(sigma))  # [B, cond_dim]
        cos, sin = self.rotary_emb.cos_sin(L, ids.device, torch.float32)
        # autocast=False must not open an `enabled=False` region: that would switch off a caller's autocast
        # for the blocks only, and bf16 c from an autocast sigma_map would then meet fp32 adaLN weights.
        region = torch.autocast(ids.device.type, dtype=torch.bfloat16) if self.autocast else contextlib.nullcontext()
        with region:
            for block in self.blocks:
                h = block(h, c, cos, sin)
            return self.output_layer(h, c, select)

    def num_parameters(self, non_embedding: bool = False) -> int:
        n = sum(p.numel() for p in self.parameters())
        return n - self.vocab_embed.embedding.numel() if non_embedding else n


class MDLM(nn.Module):
    """Wrapper whose state dict has the mdlm-owt layout: every key under `backbone.`."""

    def __init__(self, cfg: DiTConfig, autocast: bool = False):
        super().__init__()
        self.backbone = DiT(cfg, autocast=autocast)

    @property
    def config(self) -> DiTConfig:
        return self.backbone.config

    def forward(self, ids: torch.Tensor, sigma: torch.Tensor | None = None,
                select: Select | None = None) -> torch.Tensor:
        return self.backbone(ids, sigma, select)
