"""Prefixes for conditional sampling: read them (a text for every sample, or one text / id list per sample from a
file), check them, and clamp them into the sampler's initial state."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mdlm.errors import UserError


def encode_prefix(tokenizer: Any, text: str, bos: bool = True) -> list[int]:
    """Token ids of a text prefix; BOS first (unless the tokenizer already put it there) when ``bos``."""
    ids = [int(t) for t in tokenizer.encode(text)]
    bos_id = getattr(tokenizer, "bos_id", None)
    if bos and bos_id is not None and (not ids or ids[0] != bos_id):
        ids = [int(bos_id), *ids]
    return ids


def read_prefixes(tokenizer: Any, num_samples: int, text: str | None = None, file: str | Path | None = None,
                  bos: bool = True) -> list[list[int]] | None:
    """One prefix per sample index: ``text`` for all, or from ``file`` (plain text: one prefix for all; .jsonl:
    one {"text": ...} or {"token_ids": [...]} per sample, in sample order), or None when neither is given."""
    if text is not None:
        return [encode_prefix(tokenizer, text, bos)] * num_samples
    if file is None:
        return None
    path = Path(file)
    try:
        content = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read prefix file ({exc})") from None
    if path.suffix != ".jsonl":
        return [encode_prefix(tokenizer, content.rstrip("\n"), bos)] * num_samples
    lines = [ln for ln in content.splitlines() if ln.strip()]
    if len(lines) < num_samples:
        raise UserError(f"{path}: {len(lines)} prefixes, expected at least --num-samples = {num_samples}")
    prefixes = []
    for n, line in enumerate(lines[:num_samples], start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}:{n}: malformed JSON ({exc.msg})") from None
        if isinstance(row, dict) and isinstance(row.get("token_ids"), list):
            prefixes.append([int(t) for t in row["token_ids"]])
        elif isinstance(row, dict) and isinstance(row.get("text"), str):
            prefixes.append(encode_prefix(tokenizer, row["text"], bos))
        else:
            raise UserError(f"{path}:{n}: expected an object with \"text\" or \"token_ids\"")
    return prefixes


def prefix_of(prefixes: Sequence[Sequence[int]] | None, index: int) -> Sequence[int]:
    if prefixes is None:
        return ()
    if index >= len(prefixes):
        raise UserError(f"prefixes: no prefix for sample {index} (got {len(prefixes)} prefixes)")
    return prefixes[index]


def check_prefixes(prefixes: Sequence[Sequence[int]] | None, indices: np.ndarray, seq_len: int,
                    mask_id: int) -> np.ndarray:
    """[N] prefix lengths; a UserError for a missing, too long or masked prefix."""
    prefix_len = np.zeros(indices.size, dtype=np.int64)
    for k, index in enumerate(indices.tolist()):
        ids = list(prefix_of(prefixes, index))
        if len(ids) > seq_len:
            raise UserError(f"prefix of sample {index}: {len(ids)} tokens, longer than the sequence "
                            f"length {seq_len}")
        if any(t < 0 or t == mask_id for t in ids):
            raise UserError(f"prefix of sample {index}: token ids must be nonnegative and not the mask id "
                            f"{mask_id}")
        prefix_len[k] = len(ids)
    return prefix_len


def initial_state(indices: np.ndarray, prefixes: Sequence[Sequence[int]] | None, prefix_len: np.ndarray,
                   tau: np.ndarray, seq_len: int, mask_id: int) -> torch.Tensor:
    """All-mask rows [N, L] with each sample's prefix clamped; prefix positions get tau = -1 (never drawn)."""
    x = torch.full((indices.size, seq_len), mask_id, dtype=torch.long)
    for k, index in enumerate(indices.tolist()):
        if prefix_len[k]:
            x[k, :prefix_len[k]] = torch.tensor(list(prefix_of(prefixes, index)), dtype=torch.long)
            tau[k, :prefix_len[k]] = -1
    return x
