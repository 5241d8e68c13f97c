"""The judge LM: loading (offline GGUF, hub, or a local folder), retokenization and per-sample NLL scoring.

A judge is a causal LM in fp32, eval mode, no KV cache, loaded once per process and identified by its name
and the sha256 of its weights. Decoded MDLM text is retokenized by the judge (`encode_for_judge`), scored in
length-sorted batches that never drop a sample (`score_encoded`), and summarised as corpus-level gen-PPL
(`gen_ppl`: exp of total NLL over total scored tokens). Per-sample unigram entropy measures diversity.
The EOS/BOS weighting rule and how it relates to the reference implementation's are in
docs/evaluation.md.
"""

from __future__ import annotations

import hashlib
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from mdlm import judge_cache, onednn
from mdlm.config import EvaluateSettings
from mdlm.errors import UserError, first_line
from mdlm.io import sha256_file
from mdlm.judge_cache import GGUF_JUDGES

MAX_CONTEXT = 1024  # judge context cap, BOS included (mdlm: model.length = 1024)
DEFAULT_EOS_TEXT = "<|endoftext|>"  # BOS = EOS string of gpt2 and bpe-8k, kept by the sampler's decode
MDLM_MARKERS = {"bert-base-uncased": ("[SEP]", "[CLS]")}  # MDLM tokenizer -> (eos_text, bos_text)
SEPARATOR_TOKEN = "<|endoftext|>"  # preferred judge id for BOS and separators

HUB_JUDGES = {"gpt2-large": "openai-community/gpt2-large"}


def markers_for(tokenizer: str) -> tuple[str, str | None]:
    """The (EOS, BOS) strings that an MDLM with ``tokenizer`` leaves in its decoded text."""
    return MDLM_MARKERS.get(tokenizer, (DEFAULT_EOS_TEXT, None))


# ---- judge loading ---------------------------------------------------------------------------------------

@dataclass
class Judge:
    name: str  # registry name, or the folder as given
    sha256: str  # of the GGUF, or of the safetensors weights
    model: Any  # transformers causal LM, fp32, eval mode
    tokenizer: Any
    bos_id: int  # prepended to every sample and used for every EOS marker in the text
    max_length: int  # ids per sequence, BOS included


_JUDGES: dict[str, Judge] = {}  # one load per process, keyed by the resolved name


def load_judge(name_or_path: str) -> Judge:
    """Load the judge once per process: a registry name (`smollm2-135m`, `gpt2-large`) or a local folder."""
    key = name_or_path if name_or_path in GGUF_JUDGES or name_or_path in HUB_JUDGES else _folder_key(name_or_path)
    if key not in _JUDGES:
        if name_or_path in GGUF_JUDGES:
            judge = _load_gguf_judge(name_or_path)
        elif name_or_path in HUB_JUDGES:
            judge = _load_hub_judge(name_or_path)
        else:
            judge = _load_folder_judge(name_or_path)
        _JUDGES[key] = judge
    return _JUDGES[key]


def _folder_key(path: str) -> str:
    return str(Path(path).expanduser().resolve())


def _weights_sha256(folder: Path) -> str:
    """sha256 of the single safetensors file; for sharded weights, sha256 over 'name sha256' lines."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no *.safetensors weights in the judge folder")
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _load_gguf_judge(name: str) -> Judge:
    """Dequantize the GGUF once (~20 s) into a safetensors folder; later loads read that folder (<1 s)."""
    gguf = judge_cache.gguf_file(*judge_cache.GGUF_JUDGES[name])
    gguf_sha = sha256_file(gguf)
    cache = judge_cache.judge_cache_dir(name)
    if judge_cache.cache_source_sha(cache) != gguf_sha:
        judge_cache.build_gguf_cache(gguf, gguf_sha, name, cache)
    try:
        model, tokenizer = _from_folder(cache)
    except UserError:  # a damaged cache is derived data: rebuild it once
        judge_cache.build_gguf_cache(gguf, gguf_sha, name, cache)
        model, tokenizer = _from_folder(cache)
    return _finish_judge(name, gguf_sha, model, tokenizer)


def _load_hub_judge(name: str) -> Judge:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    repo = HUB_JUDGES[name]
    kwargs = dict(dtype=torch.float32, use_safetensors=True, trust_remote_code=False)
    try:  # the local Hugging Face cache works offline
        model = AutoModelForCausalLM.from_pretrained(repo, local_files_only=True, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(repo, local_files_only=True)
    except OSError:
        if not _hub_reachable():
            raise UserError(
                f"judge {name!r}: not in the local Hugging Face cache and the Hub is unreachable (offline); "
                f"use --judge smollm2-135m or a local folder"
            ) from None
        try:
            model = AutoModelForCausalLM.from_pretrained(repo, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(repo)
        except OSError as exc:
            raise UserError(f"judge {name!r}: download of {repo} failed: {first_line(exc)}") from None
    from huggingface_hub import try_to_load_from_cache

    weights = try_to_load_from_cache(repo, "model.safetensors")
    sha = sha256_file(weights) if isinstance(weights, str) else "unknown"
    return _finish_judge(name, sha, model, tokenizer)


def _hub_reachable() -> bool:
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:  # fails fast offline, where the Hub client would retry for ~25 s
        socket.getaddrinfo(host, 443)
    except OSError:
        return False
    return True


def _load_folder_judge(path: str) -> Judge:
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise UserError(f"{path}: judge folder not found (expected smollm2-135m, gpt2-large or a model folder)")
    sha = _weights_sha256(folder)
    model, tokenizer = _from_folder(folder)
    return _finish_judge(path, sha, model, tokenizer)


def _from_folder(folder: Path):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, use_safetensors=True, trust_remote_code=False
        )
        tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
    except (OSError, ValueError, KeyError, SafetensorError) as exc:
        raise UserError(f"{folder}: cannot load a causal LM and tokenizer: {first_line(exc)}") from None
    return model, tokenizer


def _finish_judge(name: str, sha: str, model, tokenizer) -> Judge:
    model.eval()
    model.requires_grad_(False)
    model.config.use_cache = False
    onednn.use_for_linears(model)  # the same GEMMs, ~1.7x faster scoring on an AMD CPU (`mdlm.onednn`)
    bos_id = _separator_id(tokenizer)
    if bos_id is None:
        raise UserError(f"judge {name!r}: tokenizer has no {SEPARATOR_TOKEN}, bos or eos token to start samples")
    context = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    max_length = min(MAX_CONTEXT, context or MAX_CONTEXT)
    return Judge(name=name, sha256=sha, model=model, tokenizer=tokenizer, bos_id=bos_id, max_length=max_length)


def _separator_id(tokenizer) -> int | None:
    vocab_id = tokenizer.get_vocab().get(SEPARATOR_TOKEN)
    for candidate in (vocab_id, tokenizer.bos_token_id, tokenizer.eos_token_id):
        if candidate is not None:
            return int(candidate)
    return None


# ---- retokenization and scoring --------------------------------------------------------------------------

class Encoded(NamedTuple):
    ids: list[int]  # judge ids, bos_id first
    weights: list[int]  # weights[i] scores ids[i] given ids[:i]; weights[0] = 0
    truncated: bool  # ids were cut to the judge's context


class SampleScores(NamedTuple):
    nll_sum: np.ndarray  # [N] float64: Σ w·nll per sample (nats)
    n_tokens: np.ndarray  # [N] int64: Σ w per sample


def encode_for_judge(
    judge: Judge, text: str, eos_text: str = DEFAULT_EOS_TEXT, bos_text: str | None = None
) -> Encoded:
    """Judge ids and weights of one decoded sample under the EOS rule of the module docstring."""
    body = text
    leading = [m for m in (eos_text, bos_text) if m]
    while True:  # drop the MDLM's leading BOS/EOS markers (any mix, any number)
        marker = next((m for m in leading if body.startswith(m)), None)
        if marker is None:
            break
        body = body[len(marker):]
    ids, weights = [judge.bos_id], [0]
    seen_eos = False
    for k, piece in enumerate(body.split(eos_text) if eos_text else [body]):
        if k > 0:  # an EOS marker: the first one counts, later ones are context only
            ids.append(judge.bos_id)
            weights.append(0 if seen_eos else 1)
            seen_eos = True
        if piece:
            # split_special_tokens: special-looking strings in generated text are plain text to the judge
            piece_ids = judge.tokenizer.encode(piece, add_special_tokens=False, split_special_tokens=True)
            ids += piece_ids
            weights += [1] * len(piece_ids)
    truncated = len(ids) > judge.max_length
    return Encoded(ids[: judge.max_length], weights[: judge.max_length], truncated)


def encode_texts(
    judge: Judge,
    texts: Sequence[str],
    eos_text: str = DEFAULT_EOS_TEXT,
    bos_text: str | None = None,
    labels: Sequence[str] | None = None,
) -> list[Encoded]:
    """Encode every text; one with no scored token raises UserError naming ``labels[i]`` (e.g. file + index)."""
    encoded = []
    for i, text in enumerate(texts):
        enc = encode_for_judge(judge, text, eos_text, bos_text)
        if sum(enc.weights) == 0:
            label = labels[i] if labels is not None else f"text {i}"
            raise UserError(f"{label}: no token for the judge to score (empty text or only EOS markers)")
        encoded.append(enc)
    return encoded


@torch.inference_mode()
def score_encoded(judge: Judge, encoded: Sequence[Encoded], batch_size: int = 8) -> SampleScores:
    """Σ w·nll and Σ w per sample; every sample is scored, in length-sorted batches of ``batch_size``."""
    if batch_size < 1:
        raise UserError(f"batch size {batch_size}: expected >= 1")
    n = len(encoded)
    nll_sum = np.zeros(n, dtype=np.float64)
    n_tokens = np.array([sum(e.weights) for e in encoded], dtype=np.int64)
    order = sorted(range(n), key=lambda i: -len(encoded[i].ids))  # similar lengths → little padding
    for start in range(0, n, batch_size):  # the last batch may be short: nothing is dropped
        rows = order[start:start + batch_size]
        length = max(len(encoded[i].ids) for i in rows)
        ids = torch.full((len(rows), length), judge.bos_id, dtype=torch.long)  # [B, T]
        for r, i in enumerate(rows):
            ids[r, : len(encoded[i].ids)] = torch.tensor(encoded[i].ids)
        # Right padding under causal attention: real positions never attend to the pads after them,
        # so no attention mask is needed and each row's logits are those of the row alone.
        logits = judge.model(input_ids=ids, use_cache=False).logits.float()  # [B, T, V]
        for r, i in enumerate(rows):
            t = len(encoded[i].ids)
            nll = F.cross_entropy(logits[r, : t - 1], ids[r, 1:t], reduction="none")  # [t-1], fp32
            w = torch.tensor(encoded[i].weights[1:], dtype=torch.float64)
            nll_sum[i] = float((nll.double() * w).sum())
    return SampleScores(nll_sum, n_tokens)


def score_samples(
    judge: Judge,
    texts: Sequence[str],
    batch_size: int = 8,
    eos_text: str = DEFAULT_EOS_TEXT,
    bos_text: str | None = None,
    labels: Sequence[str] | None = None,
) -> SampleScores:
    """Per-sample (nll_sum, n_tokens) of decoded texts under the judge; see the module docstring."""
    return score_encoded(judge, encode_texts(judge, texts, eos_text, bos_text, labels), batch_size)


def gen_ppl(nll_sum: np.ndarray, n_tokens: np.ndarray) -> float:
    """Corpus-level generative perplexity exp(Σ nll / Σ tokens), float64."""
    return math.exp(float(np.sum(nll_sum, dtype=np.float64)) / float(np.sum(n_tokens, dtype=np.float64)))


def unigram_entropy(token_ids: Sequence[int]) -> float:
    """Entropy (nats) of the empirical unigram distribution of one sample's token ids."""
    _, counts = np.unique(np.asarray(token_ids, dtype=np.int64), return_counts=True)
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: a one-token sample gives 0.0, not -0.0


# ---- the judge of a profile's `evaluate:` section ------------------------------------------------------

ScoreFn = Callable[[Sequence[str]], tuple[np.ndarray, np.ndarray]]  # texts -> (nll_sum [N], n_tokens [N])


def markers(settings: EvaluateSettings, tokenizer: str) -> tuple[str, str | None]:
    """The MDLM's (EOS, BOS) strings in decoded text: the evaluate settings, else the MDLM tokenizer's."""
    eos_default, bos_default = markers_for(tokenizer)
    return settings.eos_text or eos_default, settings.bos_text or bos_default


def scorer(settings: EvaluateSettings, tokenizer: str, seq_len: int | None = None) -> tuple[ScoreFn, dict[str, Any]]:
    """The judge of ``settings`` as a function of decoded texts, and the judge's identity for records.

    Scores under ``settings.genppl_protocol``; the `mdlm` rule retokenizes to ``settings.retokenize_length``,
    else ``seq_len`` (the MDLM's sequence length), and never drops samples here.
    """
    from mdlm.judge_reference import score_texts_reference

    eos_text, bos_text = markers(settings, tokenizer)
    max_length = settings.retokenize_length or seq_len
    if settings.genppl_protocol == "mdlm" and max_length is None:
        raise UserError("evaluate.genppl_protocol 'mdlm': needs evaluate.retokenize_length or the sequence length")
    judge = load_judge(settings.judge)

    def score(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        if settings.genppl_protocol == "mdlm":
            s = score_texts_reference(judge, list(texts), max_length, settings.batch_size)
        else:
            s = score_samples(judge, list(texts), batch_size=settings.batch_size, eos_text=eos_text,
                              bos_text=bos_text)
        return s.nll_sum, s.n_tokens

    return score, {"judge": judge.name, "judge_sha256": judge.sha256, "eos_text": eos_text, "bos_text": bos_text,
                   "genppl_protocol": settings.genppl_protocol,
                   "retokenize_length": max_length if settings.genppl_protocol == "mdlm" else judge.max_length}
