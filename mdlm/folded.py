"""The DiT's sampling-time form: the same function as `mdlm.model.DiT` for a time-agnostic model, fewer passes.

A time-agnostic DiT conditions every block on one constant vector c (the embedding of sigma = 0), so each
block's adaLN shift, scale and gate are constants. Folded once into the weights, they cost nothing per call:

    modulate(LN(h) * w, shift, scale)   ->  LN(h) with weight w * (1 + scale) and bias shift   (one kernel)
    h + gate * (a @ W.T)                ->  h += a @ (gate * W).T                             (one GEMM)
    h + gate * (m @ W2.T + b2)          ->  h += m @ (gate * W2).T + gate * b2

The rotary embedding is one complex product in place: with each head's query and key features reordered so
that the pairs it rotates sit side by side (the same order for q and k, so q . k is unchanged), a pair is a
complex number and x * cos + rotate_half(x) * sin is x * (cos + i sin).

On a CPU with AVX-512 every GEMM runs in oneDNN (torch's `mkldnn._linear_pointwise`, the op torch's own CPU
compiler emits for a linear), and the MLP's first carries the tanh GELU as its epilogue, so the activation
costs no pass of its own over [rows, 4d]. Why oneDNN rather than torch's default fp32 GEMM (MKL): on an AMD
EPYC project machine with AVX-512 MKL ran these shapes at about 90 GFLOP/s and oneDNN at about 200 (MKL does
not use its AVX-512 kernels on AMD CPUs); oneDNN picks its kernels by instruction set, not vendor. Elsewhere
(`mdlm.onednn.sampling_gemm`; on an AVX2 AMD EPYC this path was about a fifth faster), and in a build without
oneDNN, MKL's GEMMs run in place (`addmm_`) and the GELU as u * sigmoid(2z) (= 0.5 u (1 + tanh z)) in place,
because torch's tanh-GELU kernel is scalar and cost a fifth of a forward at hidden 128. On CPU at the `tiny`
sizes the blocks' elementwise passes cost as much as their GEMMs, so these rewrites are most of what a sampling
forward can save without a compiler. One piece of arithmetic is left out: asked for logits at some positions only, the
last block computes its queries, attention output and MLP only there (keys and values everywhere); the run
record counts those positions (`last_block_positions`) and the rows that computed the conditioning (none here:
it is folded), and `mdlm.flops` the executed MACs from them. The logits are the module's up to fp32 rounding
(within ~1e-6 of `DiT.forward`, tested), like any change of kernel.

Not used for a model that conditions on time or runs under autocast: those go through the module itself.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mdlm.model import MDLM, DiT
from mdlm.onednn import LINEAR_POINTWISE, sampling_gemm

_GELU_K = math.sqrt(2.0 / math.pi)  # tanh-GELU: z = K (u + 0.044715 u^3)
# bytes of MLP activations per chunk of rows. With the GELU as separate in-place passes, 1 MiB chunks keep
# those passes in the 2 MiB L2 (tiny dims: 4 rows of 128 positions). On the oneDNN path only GEMMs touch
# the activations: 2 MiB (8 rows) was fastest of 1, 2 and 4 MiB when both cores sample (the pipeline's two
# workers) on an Intel machine, and of 1, 2, 4 and 8 MiB in one process on an AMD one.
_CHUNK_BYTES = {"onednn": 2 << 20, "passes": 1 << 20}


def foldable(model: torch.nn.Module) -> bool:
    """True for an MDLM/DiT that conditions on nothing and runs in plain fp32 (no autocast)."""
    backbone = model.backbone if isinstance(model, MDLM) else model
    return isinstance(backbone, DiT) and not backbone.config.time_conditioning and not backbone.autocast


def conditions_per_row(denoiser: object) -> bool:
    """Whether a denoiser computes the conditioning for every row it runs: a module does, `FoldedDiT` does not."""
    return bool(getattr(denoiser, "computes_conditioning", True))


class FoldedDiT:
    """Inference-only copy of a time-agnostic DiT's weights with its constant conditioning folded in.

    Call as ``folded(ids [B, L])`` for logits [B, L, V], or ``folded(ids, rows [N], pos [N])`` for the logits
    at positions (rows[k], pos[k]) only, [N, V]. The weights are read once, at construction: build it after
    loading a checkpoint, and again if the model's weights change.
    """

    def __init__(self, model: torch.nn.Module):
        if not foldable(model):
            raise ValueError("FoldedDiT: needs a time-agnostic DiT without autocast")
        backbone: DiT = model.backbone if isinstance(model, MDLM) else model
        cfg = backbone.config
        self.hidden, self.heads = cfg.hidden_size, cfg.n_heads
        self.rotary = backbone.rotary_emb
        self._rotations: dict[tuple[int, str], torch.Tensor] = {}  # `_rotation`, per length and device
        with torch.no_grad():
            c = F.silu(backbone.sigma_map(torch.zeros(1, device=backbone.vocab_embed.embedding.device)))[0]
            self.embedding = backbone.vocab_embed.embedding.detach()
            self.blocks = [_fold_block(block, c, cfg.n_heads) for block in backbone.blocks]
            final = backbone.output_layer
            shift, scale = final.adaLN_modulation(c).chunk(2)
            self.final_norm = ((final.norm_final.weight * (1 + scale)).contiguous(), shift.contiguous())
            self.head = (final.linear.weight.detach(), final.linear.bias.detach())
        gelu_a, gelu_b = 2 * _GELU_K * 0.044715, 2 * _GELU_K  # 2z = u (a u^2 + b)
        self.gelu_a = gelu_a
        self.gelu_b = torch.full((cfg.mlp_ratio * cfg.hidden_size,), gelu_b, device=self.embedding.device)
        # every GEMM in oneDNN where the CPU has AVX-512 (see the module docstring); False: MKL's GEMMs in place
        # and the GELU as passes
        self.onednn = (sampling_gemm() == "onednn" and self.embedding.device.type == "cpu"
                       and self.embedding.dtype == torch.float32)

    @property
    def gemm(self) -> str:
        """The GEMMs this forward runs, as a run record names them: off oneDNN, torch's own (MKL's on the CPU)."""
        device = self.embedding.device.type
        return "onednn" if self.onednn else ("mkl" if device == "cpu" else f"torch-{device}")

    @torch.inference_mode()
    def __call__(self, ids: torch.Tensor, rows: torch.Tensor | None = None,
                 pos: torch.Tensor | None = None) -> torch.Tensor:
        B, L = ids.shape
        d = self.hidden
        rotation = self._rotation(L, ids.device)
        # the fp32 residual stream, positions flattened: a fresh tensor, which the blocks update in place
        h = F.embedding(ids, self.embedding).view(B * L, d)
        # with selected positions the last block runs apart (`_last_block_at`): only they need its output
        blocks = self.blocks if rows is None else self.blocks[:-1]
        # a few rows at a time through the blocks, so that a chunk's MLP activations stay in the core's caches;
        # rows never interact, so the logits are unchanged. The blocks update each chunk (a view of h) in place.
        chunk_bytes = _CHUNK_BYTES["onednn" if self.onednn else "passes"]
        chunk = max(1, chunk_bytes // (L * self.gelu_b.numel() * h.element_size())) * L
        for part in h.split(chunk):
            self._blocks(part, blocks, L, rotation)
        if rows is not None:
            h = self._last_block_at(h, rows, pos, B, L, rotation)  # [N, d]
        out = self._linear(F.layer_norm(h, (d,), *self.final_norm), *self.head)
        return out if rows is not None else out.view(B, L, -1)

    def _rotation(self, L: int, device: torch.device) -> torch.Tensor:
        """cos + i sin of each position's rotary angles, complex [L, 1, 1, head_dim / 2], made once per length:
        a constant, whose building cost about 50 us a call (a fixed cost, which a schedule that splits its
        rows between models pays more often)."""
        key = (L, str(device))
        if key not in self._rotations:
            cos, sin = self.rotary.cos_sin(L, device, torch.float32)
            half = cos.shape[-1] // 2
            self._rotations[key] = torch.complex(cos[:, :half], sin[:, :half])[:, None, None, :].contiguous()
        return self._rotations[key]

    # the conditioning (adaLN of every block and the final layer, time MLP) was computed once, above, and folded
    # into the weights: a call runs none of it, so the run record counts no rows of it (`conditioning_rows`)
    computes_conditioning = False

    @staticmethod
    def last_block_positions(rows: torch.Tensor, n_rows: int) -> int:
        """Positions at which a call with these selected rows computes the last block's queries, attention
        output and MLP: every row padded to the most selections any row has (`query_slots`)."""
        if _one_per_row(rows, n_rows):
            return n_rows
        return n_rows * (int(torch.bincount(rows, minlength=n_rows).max()) if rows.numel() else 0)

    def _blocks(self, h: torch.Tensor, blocks: list[dict[str, torch.Tensor]], L: int, rotation: torch.Tensor
                ) -> None:
        """The blocks on rows h [rows * L, d], in place."""
        for block in blocks:
            self._block(h, block, h.shape[0] // L, L, rotation)

    def _linear(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        """x @ w.T (+ b), w [out, in] contiguous."""
        return LINEAR_POINTWISE(x, w, b, "none", [], "") if self.onednn else F.linear(x, w, b)

    def _add_linear_(self, h: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                     b: torch.Tensor | None = None) -> torch.Tensor:
        """h += x @ w.T (+ b), in place. oneDNN's GEMM writes a fresh output, added in one pass; the MKL path
        runs in place (an out-of-place addmm would first copy h into its output)."""
        if self.onednn:
            return h.add_(LINEAR_POINTWISE(x, w, b, "none", [], ""))
        h.addmm_(x, w.t())
        return h if b is None else h.add_(b)

    def _last_block_at(self, h: torch.Tensor, rows: torch.Tensor, pos: torch.Tensor, B: int, L: int,
                       rotation: torch.Tensor) -> torch.Tensor:
        """The last block's output [N, d] at positions (rows[k], pos[k]) only. Keys and values are computed at
        every position (the selected queries attend to all of them); queries, the attention output and the MLP
        at each row's selected positions, padded to the call's largest count per row."""
        w, d, heads = self.blocks[-1], self.hidden, self.heads
        head_dim = d // heads
        q_pos, slot = query_slots(rows, pos, B)  # [B, P], [N]
        P = q_pos.shape[1]
        a = F.layer_norm(h, (d,), w["norm1_w"], w["norm1_b"])
        kv = self._linear(a, w["qkv_w"][d:]).view(B, L, 2, heads, head_dim)
        k = _rotate_(kv[:, :, 0], rotation[:, 0])  # [B, L, heads, head_dim]
        at = (torch.arange(B, device=h.device)[:, None] * L + q_pos).view(-1)  # [B * P] rows of h and a
        q = self._linear(a[at], w["qkv_w"][:d]).view(B, P, heads, head_dim)
        q = _rotate_(q, rotation.view(L, -1)[q_pos][:, :, None, :])
        attn = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), kv[:, :, 1].transpose(1, 2),
                                              is_causal=False)  # [B, heads, P, head_dim]
        hq = self._add_linear_(h[at], attn.transpose(1, 2).reshape(B * P, d), w["out_w"])
        return self._mlp(hq, w).view(B, P, d)[rows, slot]

    def _block(self, h: torch.Tensor, w: dict[str, torch.Tensor], B: int, L: int, rotation: torch.Tensor
               ) -> torch.Tensor:
        d, heads = self.hidden, self.heads
        head_dim = d // heads
        a = F.layer_norm(h, (d,), w["norm1_w"], w["norm1_b"])
        qkv = self._linear(a, w["qkv_w"]).view(B, L, 3, heads, head_dim)
        _rotate_(qkv[:, :, :2], rotation)  # q and k at once, in place
        attn = F.scaled_dot_product_attention(qkv[:, :, 0].transpose(1, 2), qkv[:, :, 1].transpose(1, 2),
                                              qkv[:, :, 2].transpose(1, 2), is_causal=False)
        h = self._add_linear_(h, attn.transpose(1, 2).reshape(B * L, d), w["out_w"])  # residual + gated projection
        return self._mlp(h, w)

    def _mlp(self, h: torch.Tensor, w: dict[str, torch.Tensor]) -> torch.Tensor:
        a = F.layer_norm(h, (self.hidden,), w["norm2_w"], w["norm2_b"])
        if self.onednn:
            gelu = LINEAR_POINTWISE(a, w["fc1_w"], w["fc1_b"], "gelu", [], "tanh")
        else:
            u = torch.addmm(w["fc1_b"], a, w["fc1_w"].t())
            gelu = torch.addcmul(self.gelu_b, u, u, value=self.gelu_a).mul_(u).sigmoid_().mul_(u)
        return self._add_linear_(h, gelu, w["fc2_w"], w["fc2_b"])


def _rotate_(x: torch.Tensor, rotation: torch.Tensor) -> torch.Tensor:
    """The rotary embedding of q or k [..., head_dim] in place, as one complex product: the folded weights
    put each rotated pair (i, i + head_dim / 2) side by side (`_pair_rows`), so a pair is one complex number
    and x * cos + rotate_half(x) * sin is x * (cos + i sin). One pass, where a roll, two products and a sum
    took four (a third of the block's time outside GEMMs and attention at the `tiny` sizes)."""
    torch.view_as_complex(x.unflatten(-1, (-1, 2))).mul_(rotation)
    return x


def _one_per_row(rows: torch.Tensor, n_rows: int) -> bool:
    """True when the selections are one per row, in row order: most calls at T = 1000."""
    return rows.numel() == n_rows and torch.equal(rows, torch.arange(n_rows, device=rows.device))


def query_slots(rows: torch.Tensor, pos: torch.Tensor, n_rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(positions [n_rows, P], slot [N]): row r's selected positions in their order, then position 0 as padding
    up to P, the most selections any row has; slot[k] is selection k's column in its row."""
    if _one_per_row(rows, n_rows):  # skips five small ops (~50 us a call)
        return pos[:, None], torch.zeros_like(rows)
    counts = torch.bincount(rows, minlength=n_rows)
    order = torch.argsort(rows, stable=True)
    first = torch.cumsum(counts, 0) - counts  # where each row's selections start in `order`
    slot = torch.empty_like(rows)
    slot[order] = torch.arange(rows.numel(), device=rows.device) - first[rows[order]]
    positions = torch.zeros(n_rows, int(counts.max()) if rows.numel() else 0, dtype=torch.long, device=rows.device)
    positions[rows, slot] = pos
    return positions, slot


def _pair_rows(qkv_w: torch.Tensor, heads: int) -> torch.Tensor:
    """The qkv weight [3d, d] with each head's query and key features reordered from (0..h-1, h..2h-1) to
    (0, h, 1, h+1, ...), h = head_dim / 2: the pairs the rotary embedding rotates become adjacent (`_rotate_`).
    Queries and keys are reordered alike, so every q . k, hence the attention, is unchanged; values are not."""
    w = qkv_w.view(3, heads, -1, qkv_w.shape[1])
    half = w.shape[2] // 2
    paired = torch.stack([torch.arange(half), torch.arange(half) + half], dim=-1).view(-1).to(qkv_w.device)
    return torch.cat([w[:2, :, paired], w[2:]]).reshape(qkv_w.shape).contiguous()


def _fold_block(block: torch.nn.Module, c: torch.Tensor, heads: int) -> dict[str, torch.Tensor]:
    """One block's weights with its (constant) adaLN shift/scale in the norms and its gates in the projections,
    its query and key features in rotary pairs (`_pair_rows`)."""
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = block.adaLN_modulation(c).chunk(6)
    fc1, fc2 = block.mlp[0], block.mlp[2]
    return {
        "norm1_w": (block.norm1.weight * (1 + scale_msa)).contiguous(), "norm1_b": shift_msa.contiguous(),
        "qkv_w": _pair_rows(block.attn_qkv.weight.detach(), heads),
        "out_w": (gate_msa[:, None] * block.attn_out.weight).contiguous(),
        "norm2_w": (block.norm2.weight * (1 + scale_mlp)).contiguous(), "norm2_b": shift_mlp.contiguous(),
        "fc1_w": fc1.weight.detach(), "fc1_b": fc1.bias.detach(),
        "fc2_w": (gate_mlp[:, None] * fc2.weight).contiguous(), "fc2_b": (gate_mlp * fc2.bias).contiguous(),
    }
