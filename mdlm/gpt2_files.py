"""Files derived from a pinned asset: GPT-2's `vocab.json` and `merges.txt` from its tiktoken ranks.

The judge-free GPT-2 tokenizer asset ships `gpt2.tiktoken` (base64 token, rank per line); the Hugging Face
tokenizer wants OpenAI's two files. Both are a function of the ranks: the merges are recovered by running
BPE on each token's bytes with the merges ranked below it.
"""

from __future__ import annotations

import json
from pathlib import Path

from mdlm.errors import UserError


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _split_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that creates ``token``: run BPE on its bytes with the merges ranked below it."""
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise UserError(f"gpt2.tiktoken: token {token!r} is not the merge of two earlier tokens")
    return parts[0], parts[1]


def derive_gpt2_hf(folder: Path) -> None:
    """Write `vocab.json` + `merges.txt` (OpenAI's `encoder.json` / `vocab.bpe`) from `gpt2.tiktoken`."""
    import base64

    ranks: dict[bytes, int] = {}
    for line in (folder / "gpt2.tiktoken").read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_char = _bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    ordered = sorted(ranks, key=ranks.__getitem__)
    encoder = {show(t): ranks[t] for t in ordered}
    encoder["<|endoftext|>"] = len(encoder)
    merges = [" ".join(show(p) for p in _split_of(t, ranks)) for t in ordered if len(t) > 1]
    (folder / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


DERIVERS = {"gpt2-hf": derive_gpt2_hf}
