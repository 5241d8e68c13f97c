"""Gen-PPL under the reference's rule (`genppl_protocol: mdlm`), next to the suite's rule of `mdlm.judge`.

The rule, as kuleshov-group/mdlm's `compute_generative_perplexity` applies it (docs/evaluation.md puts it
side by side with the suite's rule):

1. Retokenize the decoded text with the judge tokenizer as it is called by default (no BOS of our own;
   special-token strings such as ``<|endoftext|>`` in the text become their special ids), truncated to
   ``max_length`` ids (the MDLM's sequence length), and pad every row on the tokenizer's padding side to the
   longest row, with the tokenizer's pad id, which is its EOS id when it has no pad token.
2. Split each padded row into chunks of ``context`` ids (the judge's context); every chunk is scored alone.
3. In a chunk c, position j >= 1 is scored (NLL of c[j] given c[:j]) with weight
   ``(cumsum(c == eos) == 1) | (c != eos)`` at j: every non-EOS id, plus the chunk's first EOS if it is not
   at position 0. MDLM rows start with BOS = EOS, so in effect no EOS is scored there.
4. Corpus level: exp(sum of weighted NLL / sum of weights).
5. Batches of ``min(batch_size, N)`` rows in file order. The reference scores only ``N // batch`` batches
   and silently drops the rest; here that happens only with ``drop_remainder=True``, and the dropped rows
   are reported (`ReferenceScores.dropped`), never silently.

Numerics: NLL in fp32 as the reference; sums in float64 (the reference accumulates in fp32).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from mdlm.errors import UserError

GENPPL_PROTOCOLS = ("suite", "mdlm")

# ids [B, T] long, attention mask [B, T] long -> logits [B, T, V]
LogitsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def check_protocol(name: str, field: str = "evaluate.genppl_protocol") -> str:
    if name not in GENPPL_PROTOCOLS:
        raise UserError(f"{field} {name!r}: unknown gen-PPL protocol, expected one of {', '.join(GENPPL_PROTOCOLS)}")
    return name


class ReferenceScores(NamedTuple):
    nll_sum: np.ndarray  # [N] float64: Σ w·nll per sample over its chunks (0 for dropped rows)
    n_tokens: np.ndarray  # [N] int64: Σ w per sample (0 for dropped rows)
    truncated: np.ndarray  # [N] bool: retokenized text was longer than max_length
    dropped: np.ndarray  # [N] bool: in the remainder batch, not scored (drop_remainder only)


class Padded(NamedTuple):
    ids: torch.Tensor  # [N, Lp] long
    attention: torch.Tensor  # [N, Lp] long, 1 = text, 0 = pad
    truncated: np.ndarray  # [N] bool


def judge_eos_id(judge_name: str, tokenizer) -> int:
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is None:
        raise UserError(f"judge {judge_name!r}: its tokenizer has no EOS id, which gen-PPL protocol 'mdlm' "
                        f"needs (it weights tokens by the judge's EOS)")
    return int(eos)


def pad_rows(rows: Sequence[Sequence[int]], max_length: int, pad_id: int, side: str = "right") -> Padded:
    """Truncate every row to ``max_length`` ids and pad all to the longest, as the reference's tokenizer call."""
    if max_length < 2:
        raise UserError(f"retokenization length {max_length}: expected at least 2")
    if not rows:
        raise UserError("no samples to score")
    cut = [list(r[:max_length]) for r in rows]
    width = max(len(r) for r in cut)
    ids = torch.full((len(cut), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(cut), width), dtype=torch.long)
    for i, r in enumerate(cut):
        lo = 0 if side == "right" else width - len(r)
        ids[i, lo:lo + len(r)] = torch.tensor(r, dtype=torch.long)
        attention[i, lo:lo + len(r)] = 1
    return Padded(ids, attention, np.array([len(r) > max_length for r in rows], dtype=bool))


def chunk_weights(chunk: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, c] ids -> [B, c-1] weights of positions 1..c-1: non-EOS ids and the chunk's first EOS."""
    is_eos = chunk == eos_id
    first_eos = torch.cumsum(is_eos.long(), dim=-1) == 1
    return (first_eos | ~is_eos)[:, 1:]


@torch.inference_mode()
def score_padded(logits_fn: LogitsFn, padded: Padded, eos_id: int, context: int, batch_size: int,
                 drop_remainder: bool = False) -> ReferenceScores:
    """Per-sample weighted NLL and weight count of padded rows under the reference rule (module docstring)."""
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: expected >= 1")
    if context < 2:
        raise UserError(f"judge context {context}: expected at least 2")
    n = padded.ids.shape[0]
    batch = min(batch_size, n)
    scored_rows = (n // batch) * batch if drop_remainder else n
    nll_sum = np.zeros(n, dtype=np.float64)
    n_tokens = np.zeros(n, dtype=np.int64)
    for lo in range(0, scored_rows, batch):
        hi = min(lo + batch, scored_rows)
        for start in range(0, padded.ids.shape[1], context):
            chunk = padded.ids[lo:hi, start:start + context]  # [b, c]
            if chunk.shape[1] < 2:
                continue  # a one-id chunk has no position 1 to score
            logits = logits_fn(chunk, padded.attention[lo:hi, start:start + context]).float()  # [b, c, V]
            nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), chunk[:, 1:], reduction="none")  # [b, c-1]
            w = chunk_weights(chunk, eos_id)
            nll_sum[lo:hi] += (nll.double() * w).sum(dim=1).numpy()
            n_tokens[lo:hi] += w.sum(dim=1).numpy()
    dropped = np.zeros(n, dtype=bool)
    dropped[scored_rows:] = True
    return ReferenceScores(nll_sum, n_tokens, padded.truncated, dropped)


def retokenize(tokenizer, texts: Sequence[str]) -> list[list[int]]:
    """Judge ids of each text from the tokenizer's default call (the reference adds no BOS of its own)."""
    return [list(map(int, ids)) for ids in tokenizer(list(texts))["input_ids"]]


def score_texts_reference(judge, texts: Sequence[str], max_length: int, batch_size: int,
                          drop_remainder: bool = False) -> ReferenceScores:
    """The reference rule applied to decoded texts with a loaded `mdlm.judge.Judge`."""
    tokenizer = judge.tokenizer
    eos_id = judge_eos_id(judge.name, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos_id
    side = getattr(tokenizer, "padding_side", "right")
    padded = pad_rows(retokenize(tokenizer, texts), max_length, int(pad_id), side)

    def logits_fn(ids: torch.Tensor, attention: torch.Tensor) -> torch.Tensor:
        return judge.model(input_ids=ids, attention_mask=attention, use_cache=False).logits

    return score_padded(logits_fn, padded, eos_id, judge.max_length, batch_size, drop_remainder)
