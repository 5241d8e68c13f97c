"""Document split, tokenization and packing into memmaps (the library of `mdlm prepare`).

Sources are read by `mdlm.corpus` (a profile's `data.sources`).

Split: document level, by sha256 of the text. Bytes 0-7 give a fraction f in [0, 1): valid if
f < valid_frac, test if f < valid_frac + test_frac, else train. Adding or removing a document never moves
another one. Identical texts always land in the same split. A profile may instead give `valid_docs: N`
(the mdlm OWT rule: the last N documents in source order are valid, the rest train, no test split).
`max_docs` keeps the max_docs documents with the smallest sha256 bytes 8-15 (independent of the split).

Packing (rows of seq_len tokens):
  wrap: true   each document's tokens + [EOS] are concatenated per split and cut into pieces of seq_len-2
               tokens; a row is [BOS] + piece + [EOS] (the mdlm OWT layout). The incomplete piece at the end
               of a split (< seq_len-2 tokens) is not stored; meta.json records it as `tail_tokens`.
  wrap: false  every document starts a new row: its tokens are cut into pieces of at most seq_len-2 tokens
               (long documents give several rows, nothing is truncated); a row is [BOS] + piece + [EOS],
               right-padded with the tokenizer's pad id (bert: [PAD]; gpt2/bpe-8k: EOS).
Each split is stored as `<split>.bin`, a C-order uint16 (vocab <= 65536) or uint32 array [rows, seq_len]
under data/prepared/<profile>/, described by `meta.json` (written last).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mdlm.config import DataSettings
from mdlm.corpus import EMBEDDED_SOURCES, Source, iter_documents, resolve_source
from mdlm.errors import UserError
from mdlm.io import atomic_path, atomic_write_json, atomic_write_text
from mdlm.paths import prepared_dir, tokenizer_dir

SPLITS = ("train", "valid", "test")
META_FILE = "meta.json"
# bpe-8k is trained on the train split of the whole embedded corpus under these fractions, whatever profile
# triggers the training, so that every profile that uses it gets the same tokenizer.
BPE8K_SPLIT = {"sources": list(EMBEDDED_SOURCES), "valid_frac": 0.02, "test_frac": 0.02}
_BATCH_DOCS = 256
_BATCH_CHARS = 4_000_000


# ---- split -------------------------------------------------------------------------------------------

def text_digest(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()


def split_fraction(digest: bytes) -> float:
    return int.from_bytes(digest[:8], "big") / 2**64


def subset_key(digest: bytes) -> int:
    return int.from_bytes(digest[8:16], "big")


def assign_split(text: str, valid_frac: float, test_frac: float) -> str:
    f = split_fraction(text_digest(text))
    if f < valid_frac:
        return "valid"
    if f < valid_frac + test_frac:
        return "test"
    return "train"


@dataclass(frozen=True)
class Selection:
    keep: np.ndarray    # [n raw documents] bool
    empty: int          # documents skipped because their text is empty
    not_selected: int   # non-empty documents left out by max_docs

    @property
    def kept(self) -> int:
        return int(self.keep.sum())


def select_documents(docs: Iterable[tuple[str, str]], cfg: DataSettings) -> Selection:
    """First pass over the raw documents: which ones to keep (non-empty, within max_docs)."""
    keys, empty = [], []
    for _, text in docs:
        empty.append(not text)
        keys.append(subset_key(text_digest(text)) if cfg.max_docs else 0)
    empty = np.array(empty, dtype=bool)
    keep = ~empty
    if cfg.max_docs is not None and keep.sum() > cfg.max_docs:
        idx = np.flatnonzero(keep)
        order = np.lexsort((idx, np.array(keys, dtype=np.uint64)[idx]))  # by key, ties by position
        keep = np.zeros_like(keep)
        keep[idx[order[:cfg.max_docs]]] = True
    return Selection(keep, int(empty.sum()), int((~empty).sum() - keep.sum()))


def split_documents(docs: Iterable[tuple[str, str]], cfg: DataSettings,
                    keep: np.ndarray | None = None) -> Iterator[tuple[str, str, str]]:
    """(split, source, text) of every kept, non-empty document, in source order.

    ``keep`` is `select_documents(...).keep` for the same stream; it is computed here when not given.
    """
    if keep is None and (cfg.valid_docs is not None or cfg.max_docs is not None):
        docs = list(docs)
        keep = select_documents(docs, cfg).keep
    n_kept = int(keep.sum()) if keep is not None else None
    rank = 0
    for i, (source, text) in enumerate(docs):
        if not text or (keep is not None and not keep[i]):
            continue
        if cfg.valid_docs is not None:
            split = "valid" if rank >= n_kept - cfg.valid_docs else "train"
        else:
            split = assign_split(text, cfg.valid_frac, cfg.test_frac)
        rank += 1
        yield split, source, text


# ---- packing -----------------------------------------------------------------------------------------

def storage_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 2**16 else np.uint32)


class Packer:
    """Turns documents' token ids into rows of ``seq_len`` (see the module docstring) and writes them."""

    def __init__(self, out, seq_len: int, *, bos: int, eos: int, pad: int, wrap: bool, dtype: np.dtype):
        self.out, self.L, self.wrap, self.dtype = out, seq_len, wrap, np.dtype(dtype)
        self.bos, self.eos, self.pad = bos, eos, pad
        self.pending: list[int] = []   # wrap: stream tokens not yet in a row
        self.rows = 0
        self.pad_tokens = 0
        self.sha256 = hashlib.sha256()

    def add(self, ids: list[int]) -> None:
        body = self.L - 2
        if self.wrap:
            self.pending.extend(ids)
            self.pending.append(self.eos)
            if len(self.pending) >= 64 * body:
                self._flush_full_rows()
            return
        pieces = [ids[i:i + body] for i in range(0, len(ids), body)] or [[]]  # a 0-token doc keeps its row
        rows = np.full((len(pieces), self.L), self.pad, dtype=self.dtype)  # [n, L]
        for r, piece in enumerate(pieces):
            rows[r, 0] = self.bos
            rows[r, 1:1 + len(piece)] = piece
            rows[r, 1 + len(piece)] = self.eos
            self.pad_tokens += body - len(piece)
        self._write(rows)

    def _flush_full_rows(self) -> None:
        body = self.L - 2
        n = len(self.pending) // body
        if n == 0:
            return
        rows = np.empty((n, self.L), dtype=self.dtype)  # [n, L]
        rows[:, 0], rows[:, -1] = self.bos, self.eos
        rows[:, 1:-1] = np.asarray(self.pending[:n * body], dtype=self.dtype).reshape(n, body)
        del self.pending[:n * body]
        self._write(rows)

    def _write(self, rows: np.ndarray) -> None:
        data = np.ascontiguousarray(rows).tobytes()
        self.out.write(data)
        self.sha256.update(data)
        self.rows += rows.shape[0]

    def finish(self) -> int:
        """Write the last full rows; return the tail tokens left out (wrap) or 0."""
        if self.wrap:
            self._flush_full_rows()
        return len(self.pending)


def pack(docs: Iterable[list[int]], seq_len: int, *, bos: int, eos: int, pad: int, wrap: bool,
         dtype=np.uint32) -> tuple[np.ndarray, int]:
    """In-memory packing (for tests and small jobs): ([rows, seq_len] array, tail tokens)."""
    import io

    buf = io.BytesIO()
    packer = Packer(buf, seq_len, bos=bos, eos=eos, pad=pad, wrap=wrap, dtype=np.dtype(dtype))
    for ids in docs:
        packer.add(list(ids))
    tail = packer.finish()
    return np.frombuffer(buf.getvalue(), dtype=dtype).reshape(-1, seq_len), tail


# ---- the bpe-8k tokenizer ----------------------------------------------------------------------------

def ensure_bpe8k() -> Path:
    """Train bpe-8k on the train split of the embedded corpus if `tokenizer.json` is missing."""
    from tqdm import tqdm

    from mdlm.assets import ensure_assets
    from mdlm.tokenizers import BPE8K_VOCAB, bpe8k_path, train_bpe

    path = bpe8k_path()
    if path.is_file():
        return path
    ensure_assets(["corpus"])
    cfg = DataSettings(sources=BPE8K_SPLIT["sources"], seq_len=3, wrap=True,
                     valid_frac=BPE8K_SPLIT["valid_frac"], test_frac=BPE8K_SPLIT["test_frac"])
    sources = [resolve_source(s) for s in cfg.sources]
    texts = [text for split, _, text in split_documents(iter_documents(sources), cfg) if split == "train"]
    text_sha = hashlib.sha256()
    for t in texts:
        text_sha.update(t.encode("utf-8") + b"\0")
    tqdm.write(f"training bpe-8k on {len(texts)} train documents of {', '.join(cfg.sources)} ...", file=sys.stderr)
    json_text = train_bpe(texts, BPE8K_VOCAB)
    folder = tokenizer_dir("bpe-8k")
    atomic_write_json(folder / "training.json", {
        "vocab_size": BPE8K_VOCAB, **BPE8K_SPLIT, "split": "train", "documents": len(texts),
        "text_sha256": text_sha.hexdigest(), "sources_provenance": {s.name: s.provenance for s in sources},
    })
    atomic_write_text(path, json_text)
    return path


# ---- prepare -----------------------------------------------------------------------------------------

def _needed_asset_groups(cfg: DataSettings, tokenizer: str) -> list[str]:
    groups = []
    if any(s in EMBEDDED_SOURCES for s in cfg.sources if isinstance(s, str)):
        groups.append("corpus")
    groups += {"gpt2": ["gpt2"], "bert-base-uncased": ["bert"]}.get(tokenizer, [])
    return groups


def _batches(items: Iterable[tuple[str, str, str]]) -> Iterator[list[tuple[str, str, str]]]:
    batch, chars = [], 0
    for item in items:
        batch.append(item)
        chars += len(item[2])
        if len(batch) >= _BATCH_DOCS or chars >= _BATCH_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def prepare(name: str, cfg: DataSettings, tokenizer: str) -> dict[str, Any]:
    """Split, tokenize and pack the corpus of profile ``name`` into data/prepared/<name>/; return meta."""
    from mdlm.assets import ensure_assets
    from mdlm.tokenizers import get_tokenizer

    ensure_assets(_needed_asset_groups(cfg, tokenizer))
    if tokenizer == "bpe-8k":
        ensure_bpe8k()
    tok = get_tokenizer(tokenizer)
    dtype = storage_dtype(tok.vocab_size)
    sources = [resolve_source(s) for s in cfg.sources]

    sel = select_documents(iter_documents(sources), cfg)
    out_dir = prepared_dir(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / META_FILE).unlink(missing_ok=True)  # no meta = nothing here to trust until we finish
    stats = _pack_splits(sources, sel, cfg, tok, dtype, out_dir, desc=f"prepare {name}")
    meta = {
        "profile": name,
        "seq_len": cfg.seq_len,
        "dtype": dtype.name,
        "wrap": cfg.wrap,
        **_rules(cfg),
        "documents_empty_skipped": sel.empty,
        "documents_not_selected_by_max_docs": sel.not_selected,
        "tokenizer": {"name": tok.name, "vocab_size": tok.vocab_size, "mask_id": tok.mask_id,
                      "bos_id": tok.bos_id, "eos_id": tok.eos_id, "pad_id": tok.pad_id,
                      "sha256": hashlib.sha256(tok.hf.backend_tokenizer.to_str().encode()).hexdigest()},
        "sources": {s.name: s.provenance for s in sources},
        "splits": stats,
    }
    atomic_write_json(out_dir / META_FILE, meta)
    return meta


def _pack_splits(sources: list[Source], sel: Selection, cfg: DataSettings, tok, dtype: np.dtype, out_dir: Path,
                 desc: str) -> dict[str, Any]:
    """Second pass: tokenize the kept documents and pack each split into <split>.bin; per-split statistics."""
    from tqdm import tqdm

    stats = {s: {"documents": 0, "tokens": 0, "sources": {}} for s in SPLITS}
    text_sha = {s: hashlib.sha256() for s in SPLITS}
    multi_row_docs = {s: 0 for s in SPLITS}
    with contextlib.ExitStack() as stack:
        tmp = {s: stack.enter_context(atomic_path(out_dir / f"{s}.bin")) for s in SPLITS}
        files = {s: stack.enter_context(open(tmp[s], "wb")) for s in SPLITS}
        packers = {s: Packer(files[s], cfg.seq_len, bos=tok.bos_id, eos=tok.eos_id, pad=tok.pad_id,
                             wrap=cfg.wrap, dtype=dtype) for s in SPLITS}
        bar = stack.enter_context(tqdm(total=sel.kept, unit="doc", desc=desc))
        for batch in _batches(split_documents(iter_documents(sources), cfg, sel.keep)):
            for (split, source, text), ids in zip(batch, tok.encode_batch([t for _, _, t in batch]),
                                                  strict=True):
                packers[split].add(ids)
                st = stats[split]
                per = st["sources"].setdefault(source, {"documents": 0, "tokens": 0})
                for d in (st, per):
                    d["documents"] += 1
                    d["tokens"] += len(ids)
                multi_row_docs[split] += len(ids) > cfg.seq_len - 2
                text_sha[split].update(text.encode("utf-8") + b"\0")
            bar.update(len(batch))
        for s in SPLITS:
            tail = packers[s].finish()
            files[s].close()
            st = stats[s]
            st["rows"] = packers[s].rows
            if cfg.wrap:
                st["tail_tokens"] = tail
                # every document token and its EOS is in a row or in the tail: nothing else is dropped
                assert st["rows"] * (cfg.seq_len - 2) + tail == st["tokens"] + st["documents"]
            else:
                st["pad_tokens"] = packers[s].pad_tokens
                st["multi_row_documents"] = multi_row_docs[s]
            st["sha256"] = packers[s].sha256.hexdigest()
            st["text_sha256"] = text_sha[s].hexdigest()
    return stats


def _rules(cfg: DataSettings) -> dict[str, Any]:
    """How the rows were made, recorded in meta.json in words."""
    return {
        "packing": ("documents + [EOS] concatenated, cut into seq_len-2 pieces, rows [BOS] piece [EOS]; "
                    "tail_tokens (< seq_len-2) at the end of each split are not stored" if cfg.wrap else
                    "each document cut into pieces of <= seq_len-2 tokens, rows [BOS] piece [EOS] then pad_id"),
        "split_rule": ("last valid_docs documents are valid, the rest train" if cfg.valid_docs else
                       "sha256(text) bytes 0-7 as fraction f: valid if f < valid_frac, "
                       "test if f < valid_frac + test_frac, else train"),
        "valid_frac": cfg.valid_frac, "test_frac": cfg.test_frac, "valid_docs": cfg.valid_docs,
        "max_docs": cfg.max_docs,
        "max_docs_rule": "the max_docs non-empty documents with the smallest sha256(text) bytes 8-15",
    }


# ---- reading -----------------------------------------------------------------------------------------

def read_meta(name: str) -> dict[str, Any]:
    """meta.json of profile ``name``'s prepared data."""
    path = prepared_dir(name) / META_FILE
    if not path.is_file():
        raise UserError(f"{path}: missing, run `mdlm prepare --profile {name}`")
    return json.loads(path.read_text(encoding="utf-8"))


def load_split(name: str, split: str) -> np.ndarray:
    """The packed rows of ``split``: a read-only memmap [N, seq_len] of uint16/uint32 token ids."""
    if split not in SPLITS:
        raise UserError(f"split {split!r}, expected one of {', '.join(SPLITS)}")
    meta = read_meta(name)
    path = prepared_dir(name) / f"{split}.bin"
    rows, seq_len, dtype = meta["splits"][split]["rows"], meta["seq_len"], np.dtype(meta["dtype"])
    size = path.stat().st_size if path.is_file() else -1
    if size != rows * seq_len * dtype.itemsize:
        raise UserError(f"{path}: {size} bytes, expected {rows} rows x {seq_len} x {dtype.name} per "
                        f"meta.json; rerun `mdlm prepare --profile {name}`")
    if rows == 0:
        return np.zeros((0, seq_len), dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(rows, seq_len))
