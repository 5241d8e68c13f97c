"""Tokenizers: GPT-2 and BERT ids (real assets), bpe-8k training determinism and the wrapper's contract."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from mdlm import tokenizers
from mdlm.errors import UserError
from mdlm.tokenizers import get_tokenizer, tokenizer_from_file, train_bpe

TEXTS = [
    "Hello world",
    "  The quick brown fox jumps over the lazy dog.\n\nNew paragraph; numbers 1,234.5 and 2024!",
    "Unicode: café, naïve, Zürich, 東京, emoji 🙂, and a tab\tcharacter.",
    "A literal [MASK] and <|endoftext|> in the text are ordinary text.",
]


def corpus(n: int = 300) -> list[str]:
    """Seeded pseudo-English: enough distinct words for a few hundred merges, with many count ties."""
    rng = random.Random(0)
    words = ["".join(rng.choice("etaoinshrdlucmfwyp") for _ in range(rng.randint(2, 9))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


# ---- real vocabularies (fetched into a temporary root, or reused from $MDLM_CACHE) --------------------

@pytest.fixture(scope="module")
def real_root(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MDLM_ROOT", str(tmp_path_factory.mktemp("root")))
        yield


@pytest.mark.network
def test_gpt2_ids_match_openai(real_root):
    tok = get_tokenizer("gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id, tok.pad_id) == (50258, 50257, 50256, 50256, 50256)
    # tiktoken's own GPT-2 encoding, from the same hash-checked ranks file
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import r50k_pat_str

    from mdlm.assets import asset_path

    ranks = load_tiktoken_bpe(str(asset_path("gpt2") / "gpt2.tiktoken"),
                              expected_hash="306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930")
    ref = tiktoken.Encoding("gpt2", pat_str=r50k_pat_str, mergeable_ranks=ranks,
                            special_tokens={"<|endoftext|>": 50256}, explicit_n_vocab=50257)
    for text in TEXTS:
        ids = tok.encode(text)
        assert ids == ref.encode_ordinary(text)
        assert tok.decode(ids) == text
        assert max(ids) < 50256  # special ids come from packing only
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    assert tok.decode([15496, 50257, 995, 50256]) == "Hello[MASK] world<|endoftext|>"
    assert tok.batch_decode([[15496], [50257, 50257]]) == ["Hello", "[MASK][MASK]"]


@pytest.mark.network
def test_bert_base_uncased(real_root):
    tok = get_tokenizer("bert-base-uncased")
    assert (tok.vocab_size, tok.mask_id, tok.bos_id, tok.eos_id, tok.pad_id) == (30522, 103, 101, 102, 0)
    assert tok.encode("Hello World") == [7592, 2088]  # lower-cased, no [CLS]/[SEP]
    ids = tok.encode("The [MASK] token")
    assert 103 not in ids
    assert tok.decode([101, 7592, 103, 2088, 102]) == "[CLS] hello [MASK] world [SEP]"


# ---- bpe-8k ------------------------------------------------------------------------------------------

def test_bpe_training_is_deterministic_across_processes(tmp_path):
    texts = corpus()
    first = train_bpe(texts, vocab_size=400)
    assert train_bpe(texts, vocab_size=400) == first
    script = ("import hashlib, sys; sys.path.insert(0, sys.argv[1]); import tests.test_tokenizers as t; "
              "from mdlm.tokenizers import train_bpe; "
              "print(hashlib.sha256(train_bpe(t.corpus(), 400).encode()).hexdigest())")
    root = str(Path(__file__).resolve().parents[1])
    out = subprocess.run([sys.executable, "-c", script, root], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "123", "PATH": ""}, cwd=root)
    assert out.stdout.strip() == hashlib.sha256(first.encode()).hexdigest()
    assert train_bpe(texts[:-1], vocab_size=400) != first  # it does depend on the corpus


def test_bpe_tokenizer_contract(tmp_path):
    path = tmp_path / "tokenizer.json"
    path.write_text(train_bpe(corpus(), vocab_size=400))
    tok = tokenizer_from_file("bpe-test", path)
    assert (tok.vocab_size, tok.eos_id, tok.bos_id, tok.mask_id, tok.pad_id) == (400, 0, 0, 1, 0)
    for text in TEXTS:
        ids = tok.encode(text)
        assert tok.decode(ids) == text  # byte-level: every string round-trips
        assert min(ids) >= 2  # "[MASK]" and "<|endoftext|>" in text are not special ids
    assert tok.encode_batch(TEXTS) == [tok.encode(t) for t in TEXTS]
    ids = tok.encode("state union")
    assert tok.decode([0, *ids, 1, 1, 0]) == "<|endoftext|>state union[MASK][MASK]<|endoftext|>"


def test_bpe_vocab_counts_specials_and_bytes():
    with pytest.raises(UserError, match="too small for 5000 tokens"):
        train_bpe(["tiny text"], vocab_size=5000)


def test_unknown_and_missing_tokenizers(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    with pytest.raises(UserError, match="tokenizer 'gpt3' unknown"):
        get_tokenizer("gpt3")
    with pytest.raises(UserError, match="bpe-8k tokenizer missing, run `mdlm prepare`"):
        get_tokenizer("bpe-8k")


def test_model_vocab_table_covers_every_name():
    assert set(tokenizers.MODEL_VOCAB) == set(tokenizers.NAMES)
    assert tokenizers.MODEL_VOCAB["bpe-8k"] == tokenizers.BPE8K_VOCAB
    assert tokenizers.MODEL_VOCAB["gpt2"] == 50257 + 1  # GPT-2 plus the appended mask
