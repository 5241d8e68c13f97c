"""Prefixes for conditional sampling: a text for every sample, or one text / id list per sample from a file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

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
