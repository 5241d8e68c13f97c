"""Shared test fixtures. Each section names its owner module; keep sections small."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
VOCAB, MASK_ID, EOT = 8192, 1, 0  # bpe-8k ids

# ---- order of the run ----------------------------------------------------------------------------------------

LONGEST_FILE = "test_pipeline.py"  # the smoke `dvc repro` (minutes): one stage at a time, each on one core


def pytest_collection_modifyitems(config, items):
    """The smoke pipeline's tests first, the others in their order: with two xdist workers taking a file at a
    time (tox: `--dist loadfile --no-loadscope-reorder`), one runs the pipeline while the other runs the rest,
    instead of the pipeline starting last."""
    items.sort(key=lambda item: item.path.name != LONGEST_FILE)


# ---- model / diffusion / checkpoints / train tests --------------------------------------------------------


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for the module: on a shared 2-core machine, two OpenMP threads make small ops
    (test-sized models) several times slower, and results do not depend on the thread count here."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# ---- prepared smoke data without assets (train, ship tests) ----------------------------------------------


def write_prepared(root: Path, profile: str, seq_len: int, rows: dict[str, int], seed: int = 0) -> None:
    """Rows [EOT] + tokens + [EOT] of a small synthetic language (runs of consecutive ids), as `mdlm prepare`."""
    rng = np.random.default_rng(seed)
    out = root / "data" / "prepared" / profile
    out.mkdir(parents=True, exist_ok=True)
    splits = {}
    for split, n in rows.items():
        start = rng.integers(2, 400, size=(n, 1))
        x = (start + np.arange(seq_len - 2)[None]) % 500 + 2
        x = np.concatenate([np.full((n, 1), EOT), x, np.full((n, 1), EOT)], axis=1).astype(np.uint16)
        x.tofile(out / f"{split}.bin")
        splits[split] = {"rows": n, "sha256": f"synthetic-{split}"}
    meta = {"profile": profile, "seq_len": seq_len, "dtype": "uint16", "wrap": True, "splits": splits,
            "tokenizer": {"name": "bpe-8k", "vocab_size": VOCAB, "mask_id": MASK_ID, "bos_id": EOT, "eos_id": EOT,
                          "pad_id": EOT}}
    (out / "meta.json").write_text(json.dumps(meta))


@pytest.fixture
def smoke_root(tmp_path, monkeypatch):
    """A project root (MDLM_ROOT) with params.yaml and synthetic prepared smoke data; no assets needed."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    # one thread: on a shared 2-core machine, 2 OpenMP threads make these tiny matmuls many times slower
    params["profiles"]["smoke"]["train"]["num_threads"] = 1
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_prepared(tmp_path, "smoke", params["profiles"]["smoke"]["data"]["seq_len"],
                   {"train": 40, "valid": 16, "test": 4})
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    threads = torch.get_num_threads()  # train() sets the profile's thread count process-wide
    yield tmp_path
    torch.set_num_threads(threads)


# ---- small random DiTs (importance, search tests) ------------------------------------------------------------


@pytest.fixture(scope="session")
def toy_dit():
    """Factory of small random DiTs with non-trivial logits (adaLN-zero init would predict uniform)."""
    from mdlm.model import MDLM, DiTConfig

    def make(blocks: int, seed: int, vocab: int, length: int) -> MDLM:
        torch.manual_seed(seed)
        m = MDLM(DiTConfig(vocab_size=vocab, hidden_size=16, n_blocks=blocks, n_heads=2, cond_dim=8, length=length,
                           dropout=0.0))
        with torch.no_grad():
            for p in m.parameters():
                p.normal_(0.0, 0.5)
        return m.eval()

    return make


# ---- a toy tokenizer for the sample command's tests ------------------------------------------------------------


class _ToyTokenizer:
    """Ids 0..10: BOS = EOS = 0, mask 10; text characters map to 1..9; decoding joins ids with spaces."""

    vocab_size, mask_id, bos_id, eos_id = 11, 10, 0, 0

    def encode(self, text):
        return [1 + ord(c) % 9 for c in text]

    def batch_decode(self, rows):
        return [" ".join(map(str, r)) for r in rows]


@pytest.fixture
def toy_tokenizer():
    return _ToyTokenizer()
