"""Tokenizers: `gpt2` (OWT), `bert-base-uncased` (LM1B setting) and `bpe-8k` (our embedded corpus).

`get_tokenizer(name)` returns a small `Tokenizer` wrapper with the ids the diffusion model needs:

| name               | model vocab | mask                    | BOS / EOS                          | pad              |
|--------------------|-------------|-------------------------|------------------------------------|------------------|
| gpt2               | 50258       | 50257 (appended)        | `<|endoftext|>` 50256 / same       | EOS              |
| bert-base-uncased  | 30522       | `[MASK]` 103            | `[CLS]` 101 / `[SEP]` 102          | `[PAD]` 0        |
| bpe-8k             | 8192        | `[MASK]` 1              | `<|endoftext|>` 0 / same           | EOS              |

GPT-2 has no mask token, so (as in MDLM) the mask is one extra id after the 50257 GPT-2 tokens; it is
registered as the added token `[MASK]` so that leftover masks decode visibly.

`encode` never adds special tokens and never turns text into special ids: a literal "[MASK]" or
"<|endoftext|>" in a document is tokenized as ordinary text. BOS/EOS/pad are placed by packing only.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from mdlm.errors import UserError
from mdlm.paths import tokenizer_dir

NAMES = ("gpt2", "bert-base-uncased", "bpe-8k")
MASK_TOKEN = "[MASK]"
EOT_TOKEN = "<|endoftext|>"
BPE8K_VOCAB = 8192
# model vocabulary (mask included) per name of the shipped tokenizers, known without loading any file
# (FLOP counts need only this; tests check it against the loaded tokenizers)
MODEL_VOCAB = {"gpt2": 50257 + 1, "bert-base-uncased": 30522, "bpe-8k": BPE8K_VOCAB}
BPE8K_SPECIALS = (EOT_TOKEN, MASK_TOKEN)  # ids 0 and 1


class Tokenizer:
    """A Hugging Face fast tokenizer plus the ids an MDLM needs; ``vocab_size`` counts the mask."""

    def __init__(self, name: str, hf, *, mask_id: int, bos_id: int, eos_id: int, pad_id: int):
        self.name = name
        self.hf = hf  # transformers.PreTrainedTokenizerFast, for anyone who needs its API
        self.mask_id, self.bos_id, self.eos_id, self.pad_id = mask_id, bos_id, eos_id, pad_id
        self.vocab_size = len(hf)
        if not 0 <= mask_id < self.vocab_size:
            raise UserError(f"tokenizer {name}: mask id {mask_id} outside the vocabulary of {self.vocab_size}")
        self._backend = hf.backend_tokenizer
        self._backend.encode_special_tokens = True  # text never produces special ids
        self._encode_batch = getattr(self._backend, "encode_batch_fast", self._backend.encode_batch)

    def __repr__(self) -> str:
        return (f"Tokenizer({self.name!r}, vocab_size={self.vocab_size}, mask_id={self.mask_id}, "
                f"bos_id={self.bos_id}, eos_id={self.eos_id}, pad_id={self.pad_id})")

    def encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        """Decode keeping special tokens, so masks show as "[MASK]" and BOS/EOS stay visible."""
        return self._backend.decode([int(i) for i in ids], skip_special_tokens=False)

    def batch_decode(self, rows: Iterable[Iterable[int]]) -> list[str]:
        return [self.decode(r) for r in rows]


def get_tokenizer(name: str) -> Tokenizer:
    builders = {"gpt2": _gpt2, "bert-base-uncased": _bert, "bpe-8k": _bpe8k}
    if name not in builders:
        raise UserError(f"params.yaml: tokenizer {name!r} unknown, expected one of {', '.join(NAMES)}")
    return builders[name]()


def _gpt2() -> Tokenizer:
    from transformers import GPT2TokenizerFast

    from mdlm.assets import asset_path, ensure_assets

    ensure_assets(["gpt2"])
    hf = GPT2TokenizerFast.from_pretrained(str(asset_path("gpt2")))
    hf.add_special_tokens({"mask_token": MASK_TOKEN})  # id 50257 = len(GPT-2 vocab)
    eot = hf.convert_tokens_to_ids(EOT_TOKEN)
    return Tokenizer("gpt2", hf, mask_id=hf.mask_token_id, bos_id=eot, eos_id=eot, pad_id=eot)


def _bert() -> Tokenizer:
    from transformers import BertTokenizerFast

    from mdlm.assets import asset_path, ensure_assets

    ensure_assets(["bert"])
    # From vocab.txt, not the package's tokenizer.json (that one has MiniLM's fixed truncation/padding).
    hf = BertTokenizerFast(str(asset_path("bert-base-uncased") / "vocab.txt"), do_lower_case=True)
    return Tokenizer("bert-base-uncased", hf, mask_id=hf.mask_token_id, bos_id=hf.cls_token_id,
                     eos_id=hf.sep_token_id, pad_id=hf.pad_token_id)


def bpe8k_path() -> Path:
    return tokenizer_dir("bpe-8k") / "tokenizer.json"


def _bpe8k() -> Tokenizer:
    path = bpe8k_path()
    if not path.is_file():
        raise UserError(f"{path}: bpe-8k tokenizer missing, run `mdlm prepare` (it trains it on the corpus)")
    return tokenizer_from_file("bpe-8k", path)


def tokenizer_from_file(name: str, path: str | Path) -> Tokenizer:
    """Wrap a byte-level BPE `tokenizer.json` whose specials are `<|endoftext|>` and `[MASK]`."""
    from transformers import PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_file=str(path), bos_token=EOT_TOKEN, eos_token=EOT_TOKEN,
                                 mask_token=MASK_TOKEN)
    if hf.mask_token_id is None or hf.eos_token_id is None:
        raise UserError(f"{path}: expected special tokens {EOT_TOKEN!r} and {MASK_TOKEN!r}")
    eot = hf.eos_token_id
    return Tokenizer(name, hf, mask_id=hf.mask_token_id, bos_id=eot, eos_id=eot, pad_id=eot)


def train_bpe(texts: Iterable[str], vocab_size: int = BPE8K_VOCAB) -> str:
    """Train a GPT-2-style byte-level BPE; return its `tokenizer.json` text.

    ``vocab_size`` counts everything: the specials (`<|endoftext|>` = 0, `[MASK]` = 1), the 256 byte
    symbols and the merges. Deterministic: the same texts in the same order give byte-identical JSON.
    """
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    tok = RawTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(BPE8K_SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    got = tok.get_vocab_size()
    if got != vocab_size:
        raise UserError(f"bpe tokenizer: training text too small for {vocab_size} tokens (got {got})")
    return tok.to_str(pretty=True)
