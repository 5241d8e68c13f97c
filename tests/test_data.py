"""Document split, packing, the local-files `datasets` path and `prepare` end to end (all offline)."""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from pydantic import ValidationError

from mdlm import corpus, data
from mdlm.config import DataSettings
from mdlm.errors import UserError
from mdlm.tokenizers import train_bpe


def make_docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(500)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(3, 60))) + "." for _ in range(n)]


def cfg(**kw) -> DataSettings:
    base = {"sources": ["x"], "seq_len": 16, "wrap": True, "valid_frac": 0.1, "test_frac": 0.1}
    return DataSettings(**{**base, **kw})


def splits_of(docs: list[str], c: DataSettings) -> dict[str, str]:
    stream = [("x", d) for d in docs]
    sel = data.select_documents(stream, c)
    return {text: split for split, _, text in data.split_documents(stream, c, sel.keep)}


# ---- split -------------------------------------------------------------------------------------------

def test_split_is_deterministic_with_expected_fractions():
    docs = make_docs(4000)
    first = splits_of(docs, cfg())
    assert first == splits_of(list(reversed(docs)), cfg())  # by content, not by position
    counts = {s: sum(v == s for v in first.values()) for s in data.SPLITS}
    assert 300 < counts["valid"] < 500 and 300 < counts["test"] < 500
    assert data.assign_split("some text", 0.1, 0.1) == data.assign_split("some text", 0.1, 0.1)


def test_adding_or_removing_a_document_moves_no_other():
    docs = make_docs(1000)
    before = splits_of(docs, cfg())
    after = splits_of(docs[:500] + ["a brand new document"] + docs[501:], cfg())
    del before[docs[500]]
    assert {t: after[t] for t in before} == before


def test_max_docs_is_a_deterministic_subset_independent_of_the_split():
    docs = make_docs(3000)
    c = cfg(max_docs=300)
    kept = splits_of(docs, c)
    assert len(kept) == 300
    assert kept == splits_of(list(reversed(docs)), c)
    # the subset keys are independent of the split fractions: the subset is not all valid/test
    assert 180 < sum(s == "train" for s in kept.values()) < 290
    # each kept document is in the split it has in the full corpus
    full = splits_of(docs, cfg())
    assert all(full[t] == s for t, s in kept.items())
    # the subset is those with the smallest sha256 bytes 8-15
    keys = sorted(data.subset_key(data.text_digest(t)) for t in docs)
    assert max(data.subset_key(data.text_digest(t)) for t in kept) == keys[299]


def test_empty_documents_are_skipped_and_counted():
    stream = [("x", "a"), ("x", ""), ("x", "b"), ("y", "")]
    sel = data.select_documents(stream, cfg(max_docs=1))
    assert (sel.empty, sel.not_selected, sel.kept) == (2, 1, 1)


def test_valid_docs_takes_the_last_documents():
    docs = [f"doc {i}" for i in range(10)]
    c = DataSettings(sources=["x"], seq_len=8, wrap=True, valid_docs=3)
    out = list(data.split_documents([("x", d) for d in docs], c))
    assert [s for s, _, _ in out] == ["train"] * 7 + ["valid"] * 3


@pytest.mark.parametrize("change, message", [
    ({"seq_len": 2}, "seq_len"), ({"wrap": "yes"}, "wrap"),
    ({"valid_frac": 0.6, "test_frac": 0.5}, "valid_frac \\+ test_frac"),
    ({"max_docs": 0}, "max_docs"), ({"shuffle": True}, "shuffle"), ({"sources": []}, "sources"),
])
def test_bad_data_settings(change, message):
    d = {"sources": ["sotu"], "seq_len": 16, "wrap": True, "valid_frac": 0.1, "test_frac": 0.1, **change}
    with pytest.raises(ValidationError, match=message):
        DataSettings(**d)


# ---- packing -----------------------------------------------------------------------------------------

BOS, EOS, PAD = 900, 901, 902


def random_docs(n: int, seed: int = 0) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(2, 800) for _ in range(rng.choice([1, 3, 13, 14, 15, 40]))] for _ in range(n)]


def test_wrap_packing_layout_and_no_token_lost():
    docs = random_docs(200)
    rows, tail = data.pack(docs, 16, bos=BOS, eos=EOS, pad=PAD, wrap=True)
    assert rows.shape[1] == 16 and rows.shape[0] > 0
    assert (rows[:, 0] == BOS).all() and (rows[:, -1] == EOS).all()
    stream = [t for d in docs for t in (*d, EOS)]
    assert 0 <= tail < 14
    assert rows[:, 1:-1].ravel().tolist() + stream[len(stream) - tail:] == stream


def test_no_wrap_packing_keeps_documents_apart_and_whole():
    docs = random_docs(100, seed=1)
    rows, tail = data.pack(docs, 16, bos=BOS, eos=EOS, pad=PAD, wrap=False)
    assert tail == 0 and rows.shape[1] == 16
    assert rows.shape[0] == sum(-(-len(d) // 14) for d in docs)
    assert (rows[:, 0] == BOS).all()
    pieces = []
    for row in rows.tolist():
        end = row.index(EOS)
        assert all(t == PAD for t in row[end + 1:])
        pieces.append(row[1:end])
    rebuilt, i = [], 0
    for d in docs:  # a document of n tokens fills ceil(n / 14) consecutive rows
        k = -(-len(d) // 14)
        rebuilt.append([t for p in pieces[i:i + k] for t in p])
        i += k
    assert rebuilt == docs


def test_storage_dtype():
    assert data.storage_dtype(8192) == np.uint16 and data.storage_dtype(65536) == np.uint16
    assert data.storage_dtype(65537) == np.uint32


# ---- local files through `datasets` -------------------------------------------------------------------

@pytest.fixture
def hf_offline(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf-cache")


def test_local_text_and_json_files(tmp_path, hf_offline):
    txt = tmp_path / "a.txt"
    txt.write_text("first line\nsecond line\n")
    jsonl = tmp_path / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"body": f"record {i}", "id": i}) + "\n" for i in range(5)))
    n, texts = corpus.read_local_files(str(txt), "text")
    assert (n, list(texts)) == (2, ["first line", "second line"])
    n, texts = corpus.read_local_files([str(jsonl)], "json", field="body")
    assert (n, list(texts)) == (5, [f"record {i}" for i in range(5)])
    with pytest.raises(UserError, match="no field 'text'"):
        corpus.read_local_files([str(jsonl)], "json")
    with pytest.raises(UserError, match="load_dataset"):
        corpus.read_local_files([str(tmp_path / "missing.txt")], "text")


# ---- prepare end to end --------------------------------------------------------------------------------

@pytest.fixture
def synthetic(tmp_path, monkeypatch, hf_offline):
    """A project root with a small bpe-8k stand-in and a JSON-lines corpus of 400 documents."""
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    docs = make_docs(400, seed=3)
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in docs) + json.dumps({"text": "  "}) + "\n")
    tok = tmp_path / "data" / "tokenizers" / "bpe-8k" / "tokenizer.json"
    tok.parent.mkdir(parents=True)
    tok.write_text(train_bpe(docs, vocab_size=600))
    return docs, corpus


class SyntheticProfile(NamedTuple):
    name: str
    data: DataSettings
    tokenizer: str


def profile(corpus: Path, **data_kw) -> SyntheticProfile:
    d = {"sources": [{"name": "synth", "files": [str(corpus)], "format": "json"}], "seq_len": 32,
         "wrap": True, "valid_frac": 0.1, "test_frac": 0.1, "max_docs": None, **data_kw}
    return SyntheticProfile("synthetic", DataSettings(**d), "bpe-8k")


def test_prepare_end_to_end(synthetic, tmp_path):
    from mdlm.tokenizers import get_tokenizer

    docs, corpus = synthetic
    p = profile(corpus)
    meta = data.prepare(*p)
    out = tmp_path / "data" / "prepared" / "synthetic"
    assert sorted(f.name for f in out.iterdir()) == ["meta.json", "test.bin", "train.bin", "valid.bin"]
    assert data.read_meta(p.name) == meta
    assert meta["documents_empty_skipped"] == 1
    assert meta["tokenizer"]["vocab_size"] == 600 and meta["dtype"] == "uint16"
    assert sum(meta["splits"][s]["documents"] for s in data.SPLITS) == 400
    tok = get_tokenizer("bpe-8k")
    expected = {s: [d for d in docs if data.assign_split(d, 0.1, 0.1) == s] for s in data.SPLITS}
    for s in data.SPLITS:
        st = meta["splits"][s]
        x = data.load_split(p.name, s)
        assert x.shape == (st["rows"], 32) and x.dtype == np.uint16
        assert hashlib.sha256((out / f"{s}.bin").read_bytes()).hexdigest() == st["sha256"]
        ids = [tok.encode(d) for d in expected[s]]
        assert st["documents"] == st["sources"]["synth"]["documents"] == len(ids)
        assert st["tokens"] == sum(map(len, ids))
        rows, tail = data.pack(ids, 32, bos=0, eos=0, pad=0, wrap=True, dtype=np.uint16)
        assert np.array_equal(x, rows) and st["tail_tokens"] == tail
    text = get_tokenizer("bpe-8k").decode(data.load_split(p.name, "train")[0])
    assert text.startswith("<|endoftext|>") and text.endswith("<|endoftext|>")
    # same input -> byte-identical output
    assert data.prepare(*p)["splits"] == meta["splits"]


def test_prepare_without_wrap_and_with_max_docs(synthetic):
    docs, corpus = synthetic
    p = profile(corpus, wrap=False, max_docs=100, seq_len=8)
    meta = data.prepare(*p)
    assert sum(meta["splits"][s]["documents"] for s in data.SPLITS) == 100
    assert meta["documents_not_selected_by_max_docs"] == 300
    train = data.load_split(p.name, "train")
    assert train.shape[0] >= meta["splits"]["train"]["documents"]
    assert (train[:, 0] == 0).all()
    assert meta["splits"]["train"]["multi_row_documents"] > 0


def test_load_split_refuses_missing_or_stale_files(synthetic, tmp_path):
    _, corpus = synthetic
    p = profile(corpus)
    with pytest.raises(UserError, match="meta.json: missing, run `mdlm prepare --profile synthetic`"):
        data.load_split(p.name, "train")
    data.prepare(*p)
    with pytest.raises(UserError, match="split 'dev'"):
        data.load_split(p.name, "dev")
    path = tmp_path / "data" / "prepared" / "synthetic" / "valid.bin"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(UserError, match="valid.bin: .* expected .* rerun"):
        data.load_split(p.name, "valid")


def test_unknown_source_is_a_user_error():
    with pytest.raises(UserError, match="unknown source 'c4'"):
        corpus.resolve_source("c4")


# ---- the pinned OpenWebText archive (data.dvc), read locally --------------------------------------------------


def _tar_xz(files: dict[str, bytes]) -> bytes:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:xz") as tar:
        for name, blob in files.items():  # in the given order: the reader must sort documents itself
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tar.addfile(info, io.BytesIO(blob))
    return buf.getvalue()


@pytest.fixture
def owt_archive(tmp_path):
    """An archive shaped like OpenWebText's: subset tar.xz files, each a tar of one .txt per document."""
    sub0 = _tar_xz({"0002-b.txt": b"second doc\n", "0001-a.txt": b"first doc\n", "notes.md": b"skip me"})
    sub1 = _tar_xz({"0003-c.txt": "caf\u00e9 third".encode()})
    path = tmp_path / "openwebtext.tar.xz"
    path.write_bytes(_tar_xz({"openwebtext/urlsf_subset00-1_data.xz": sub0,
                              "openwebtext/urlsf_subset00-2_data.xz": sub1}))
    return path, hashlib.sha256(path.read_bytes()).hexdigest()


def test_owt_archive_documents_in_order_after_verifying(owt_archive):
    path, sha = owt_archive
    source = corpus.resolve_source({"name": "openwebtext", "archive": str(path), "sha256": sha})
    docs = list(source.open())
    assert docs == ["first doc\n", "second doc\n", "caf\u00e9 third"]
    assert source.provenance == {"archive": str(path), "sha256": sha}


def test_owt_archive_refuses_a_wrong_missing_or_broken_file(owt_archive, tmp_path):
    path, sha = owt_archive
    with pytest.raises(UserError, match=r"openwebtext.tar.xz: sha256 [0-9a-f]{64}, expected 0{64}"):
        list(corpus.read_owt_archive(path, "0" * 64))
    with pytest.raises(UserError, match=r"nope.tar.xz: OpenWebText archive not found \(`dvc update data.dvc`"):
        list(corpus.read_owt_archive(tmp_path / "nope.tar.xz", sha))
    broken = tmp_path / "broken.tar.xz"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(UserError, match=r"broken.tar.xz: cannot read the archive"):
        list(corpus.read_owt_archive(broken, hashlib.sha256(broken.read_bytes()).hexdigest()))
    with pytest.raises(UserError, match=r"needs its sha256"):
        corpus.resolve_source({"archive": str(path)})


def test_data_dvc_pins_the_archive_the_reader_verifies():
    import yaml

    pin = yaml.safe_load((Path(__file__).resolve().parents[1] / "data.dvc").read_text())
    assert pin["frozen"] is True
    assert pin["outs"][0]["path"] == corpus.OWT_ARCHIVE["path"]
    assert pin["meta"]["sha256"] == corpus.OWT_ARCHIVE["sha256"]
    assert pin["meta"]["size"] == pin["outs"][0]["size"] == corpus.OWT_ARCHIVE["size"]
    source = corpus.resolve_source("openwebtext-archive")
    assert source.provenance["sha256"] == corpus.OWT_ARCHIVE["sha256"]


def test_owt_archive_is_hashed_once_per_source(owt_archive, monkeypatch):
    import mdlm.io

    path, sha = owt_archive
    calls = []
    real = mdlm.io.sha256_file
    monkeypatch.setattr(mdlm.io, "sha256_file", lambda p: calls.append(p) or real(p))
    source = corpus.resolve_source({"archive": str(path), "sha256": sha})
    assert list(source.open()) == list(source.open())  # prepare's two passes
    assert len(calls) == 1
