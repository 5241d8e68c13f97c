"""Judge-based generative perplexity, unigram entropy, bootstrap and paired intervals; `mdlm evaluate`.

Protocol (mdlm's `compute_generative_perplexity`, with its quirks fixed; see mdlm-reference.md section 9):

- Judge: a causal LM in fp32, eval mode, no KV cache, loaded once per process. `smollm2-135m` is the offline
  SmolLM2-135M-Instruct Q4_1 GGUF asset, dequantized once and cached as a safetensors folder under
  `data/judge/smollm2-135m/`; `gpt2-large` is the Hugging Face Hub model (online only); anything else is a local
  folder. The judge's identity is its name plus the sha256 of its GGUF (or of its safetensors weights).
- Text: the sampler's decoded `text`, retokenized by the judge with no special tokens added and with special
  strings in the text read as plain text. The MDLM's EOS string (`eos_text`, default `<|endoftext|>`) is
  structure, not text:
    * leading EOS/BOS markers are the MDLM's BOS: they are dropped, and a fixed judge id (`Judge.bos_id`: the
      judge's `<|endoftext|>`, i.e. 0 for SmolLM2 and 50256 for GPT-2, else its bos, else its eos) is prepended
      instead, so the first real token is scored;
    * every other EOS marker becomes that same judge id (a document separator);
    * weights (the mdlm rule): every text token counts 1, the first separator counts 1 (it scores where the
      first document ends), later separators count 0 (they stay in the context; EOS padding is free to predict
      and must not flatter the score). Text after the first EOS is still scored, as in mdlm's code.
  The sequence (BOS included) is truncated to the judge's context, at most 1024 ids.
- NLL: fp32 cross-entropy of ids[1:] given ids[:-1]; per sample Σ w·nll and Σ w, accumulated in float64.
  Corpus gen-PPL = exp(Σ_samples Σ w·nll / Σ_samples Σ w), not a mean of per-sample PPLs.
  Every sample is scored, whatever the batch size (mdlm drops the remainder batch). A sample with no scored
  token (empty text, or only EOS markers) is an error, never skipped.
- Diversity: per-sample unigram entropy of the MDLM `token_ids` (all ids as generated, specials included),
  in nats, averaged over samples.
- Uncertainty: seeded percentile bootstrap over samples (95%); paired bootstrap over (seed, sample_index) pairs
  for differences against a baseline schedule sampled with the same seeds.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlparse

import numpy as np
import torch
import torch.nn.functional as F

from mdlm.errors import UserError, first_line
from mdlm.io import atomic_write_json, atomic_write_jsonl, read_jsonl
from mdlm.profiles import assets_dir, data_dir, load_profile

MAX_CONTEXT = 1024  # judge context cap, BOS included (mdlm: model.length = 1024)
DEFAULT_EOS_TEXT = "<|endoftext|>"  # BOS = EOS string of gpt2 and bpe-8k, kept by the sampler's decode
MDLM_MARKERS = {"bert-base-uncased": ("[SEP]", "[CLS]")}  # profile tokenizer -> (eos_text, bos_text)
SEPARATOR_TOKEN = "<|endoftext|>"  # preferred judge id for BOS and separators

GGUF_JUDGES = {"smollm2-135m": ("smollm2-135m", "SmolLM2-135M-Instruct.Q4_1.gguf")}  # name -> (asset, file)
HUB_JUDGES = {"gpt2-large": "openai-community/gpt2-large"}
CACHE_MARKER = "judge.json"  # written last into a cached judge folder; names its source GGUF and hash


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


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _weights_sha256(folder: Path) -> str:
    """sha256 of the single safetensors file; for sharded weights, sha256 over 'name sha256' lines."""
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise UserError(f"{folder}: no *.safetensors weights in the judge folder")
    if len(files) == 1:
        return sha256_file(files[0])
    lines = "".join(f"{f.name} {sha256_file(f)}\n" for f in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _gguf_file(asset: str, filename: str) -> Path:
    try:
        from mdlm.assets import asset_path
    except ModuleNotFoundError as exc:
        if exc.name != "mdlm.assets":
            raise
        folder = assets_dir() / asset
    else:
        folder = Path(asset_path(asset))
    path = folder if folder.is_file() else folder / filename
    if not path.is_file():
        raise UserError(f"{path}: judge GGUF not found (fetch the '{asset}' asset: `mdlm assets`)")
    return path


def judge_cache_dir(name: str) -> Path:
    return data_dir() / "judge" / name


def _load_gguf_judge(name: str) -> Judge:
    """Dequantize the GGUF once (~20 s) into a safetensors folder; later loads read that folder (<1 s)."""
    gguf = _gguf_file(*GGUF_JUDGES[name])
    gguf_sha = sha256_file(gguf)
    cache = judge_cache_dir(name)
    if _cache_source_sha(cache) != gguf_sha:
        _build_gguf_cache(gguf, gguf_sha, name, cache)
    try:
        model, tokenizer = _from_folder(cache)
    except UserError:  # a damaged cache is derived data: rebuild it once
        _build_gguf_cache(gguf, gguf_sha, name, cache)
        model, tokenizer = _from_folder(cache)
    return _finish_judge(name, gguf_sha, model, tokenizer)


def _cache_source_sha(cache: Path) -> str | None:
    try:
        return json.loads((cache / CACHE_MARKER).read_text(encoding="utf-8")).get("gguf_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def _build_gguf_cache(gguf: Path, gguf_sha: str, name: str, cache: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    except (OSError, ValueError, ImportError) as exc:
        raise UserError(f"{gguf}: cannot load the judge GGUF: {first_line(exc)}") from None
    # transformers refuses to save a model loaded from GGUF; the weights are already dequantized fp32,
    # so move them into a plain model of the same config (no copy: meta init, then assign).
    config = copy.deepcopy(quantized.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(quantized.state_dict(), strict=True, assign=True)
    model.tie_weights()

    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", suffix=".tmp", dir=cache.parent))
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {"name": name, "gguf_file": gguf.name, "gguf_sha256": gguf_sha}
        (tmp / CACHE_MARKER).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
        _share_like_umask(tmp)
        _replace_dir(tmp, cache)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _share_like_umask(folder: Path) -> None:
    """mkdtemp (and safetensors) create owner-only files; give the cache the modes of ordinary outputs."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for f in folder.iterdir():
        f.chmod(0o666 & ~umask)


def _replace_dir(new: Path, target: Path) -> None:
    """Rename ``new`` onto ``target``; an existing ``target`` (stale cache) is moved aside first."""
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".old", dir=target.parent))
        os.replace(target, old / "dir")
    try:
        os.replace(new, target)
    except OSError:
        if not target.exists():  # another process filled the cache meanwhile otherwise
            raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


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


# ---- bootstrap ------------------------------------------------------------------------------------------

class Interval(NamedTuple):
    point: float
    low: float
    high: float


Stat = Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # ([R, N], [R, N] | None) -> [R]


def ratio_of_sums(values: np.ndarray, weights: np.ndarray | None) -> np.ndarray:
    """Σ values / Σ weights along the last axis (the mean when weights is None); log gen-PPL for NLLs."""
    if weights is None:
        return values.mean(axis=-1)
    return values.sum(axis=-1) / weights.sum(axis=-1)


def bootstrap_indices(n: int, B: int, seed: int) -> np.ndarray:
    """[B, n] resampling indices; the same (n, B, seed) gives the same resamples in every stage."""
    if n < 1 or B < 1:
        raise UserError(f"bootstrap: needs >= 1 sample and >= 1 resample (got {n} samples, B={B})")
    return np.random.default_rng(seed).integers(0, n, size=(B, n))


def _percentiles(point: float, reps: np.ndarray, level: float) -> Interval:
    low, high = np.quantile(reps, [(1 - level) / 2, (1 + level) / 2])
    return Interval(float(point), float(low), float(high))


def _as_f64(x) -> np.ndarray | None:
    return None if x is None else np.asarray(x, dtype=np.float64)


def bootstrap_ci(
    values, weights=None, stat: Stat = ratio_of_sums, B: int = 2000, seed: int = 0, level: float = 0.95
) -> Interval:
    """Percentile bootstrap interval of ``stat(values, weights)`` over samples (resampled jointly).

    Default stat: Σ values / Σ weights — with (nll_sum, n_tokens) that is log gen-PPL (exponentiate the
    interval for gen-PPL); with weights None, the mean (e.g. of per-sample entropies).
    """
    values, weights = _as_f64(values), _as_f64(weights)
    idx = bootstrap_indices(len(values), B, seed)
    point = stat(values[None], None if weights is None else weights[None])[0]
    reps = stat(values[idx], None if weights is None else weights[idx])
    return _percentiles(point, reps, level)


def paired_ci(
    values,
    weights,
    base_values,
    base_weights,
    stat: Stat = ratio_of_sums,
    B: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> Interval:
    """Paired percentile bootstrap of stat(schedule) − stat(baseline); row i of both is the same pair.

    With (nll_sum, n_tokens) this is Δ log gen-PPL; with weights None, the difference of means.
    """
    values, weights = _as_f64(values), _as_f64(weights)
    base_values, base_weights = _as_f64(base_values), _as_f64(base_weights)
    if len(values) != len(base_values):
        raise UserError(f"paired bootstrap: {len(values)} samples vs {len(base_values)} baseline samples")
    idx = bootstrap_indices(len(values), B, seed)

    def delta(rows):  # rows: [R, N] indices, the same for both sides
        w = None if weights is None else weights[rows]
        bw = None if base_weights is None else base_weights[rows]
        return stat(values[rows], w) - stat(base_values[rows], bw)

    return _percentiles(delta(np.arange(len(values))[None])[0], delta(idx), level)


def align_pairs(
    keys: Sequence, base_keys: Sequence, where: str = "samples", base_where: str = "baseline"
) -> np.ndarray:
    """Indices into the baseline so that base[perm[i]] pairs with sample i; the key sets must be equal."""
    position = {k: j for j, k in enumerate(base_keys)}
    missing = [k for k in keys if k not in position]
    extra = sorted(set(base_keys) - set(keys), key=str)
    if missing or extra or len(position) != len(base_keys) or len(set(keys)) != len(keys):
        detail = f"{len(missing)} (seed, sample_index) keys only in {where}, {len(extra)} only in {base_where}"
        example = (missing or extra)[:3]
        raise UserError(f"{where} vs {base_where}: samples do not pair one to one ({detail}; e.g. {example})")
    return np.array([position[k] for k in keys], dtype=np.int64)


# ---- samples files --------------------------------------------------------------------------------------

@dataclass
class Samples:
    path: Path
    texts: list[str]
    token_ids: list[list[int]]
    keys: list[tuple]  # (seed, sample_index), unique
    schedule: str

    def labels(self) -> list[str]:
        return [f"{self.path}: sample_index {k[1]} (seed {k[0]})" for k in self.keys]


def read_samples(path: str | os.PathLike) -> Samples:
    """Read a sampler JSONL file; every non-blank line is one sample (unknown fields are ignored)."""
    path = Path(path)
    texts, token_ids, keys, schedules = [], [], [], set()
    for lineno, row in read_jsonl(path, "samples file"):
        where = f"{path}:{lineno}"
        missing = [f for f in ("text", "token_ids", "sample_index") if f not in row]
        if missing:
            raise UserError(f"{where}: lacks {', '.join(missing)}")
        if not isinstance(row["text"], str):
            raise UserError(f"{where}: 'text' must be a string")
        ids = row["token_ids"]
        if not isinstance(ids, list) or not ids or not all(isinstance(t, int) for t in ids):
            raise UserError(f"{where}: 'token_ids' must be a non-empty list of integers")
        if not isinstance(row["sample_index"], int):
            raise UserError(f"{where}: 'sample_index' must be an integer")
        key = (row.get("seed"), row["sample_index"])
        texts.append(row["text"])
        token_ids.append(ids)
        keys.append(key)
        schedules.add(_schedule_name(row.get("schedule")))
    if not texts:
        raise UserError(f"{path}: no samples (empty file)")
    if len(set(keys)) != len(keys):
        dup = next(k for k in keys if keys.count(k) > 1)
        raise UserError(f"{path}: duplicate sample (seed {dup[0]}, sample_index {dup[1]})")
    schedules.discard(None)
    if len(schedules) > 1:
        raise UserError(f"{path}: samples of several schedules ({', '.join(sorted(schedules))}); one per file")
    schedule = schedules.pop() if schedules else path.stem
    return Samples(path, texts, token_ids, keys, schedule)


def _schedule_name(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        return value["name"]
    return json.dumps(value, sort_keys=True)


# ---- evaluation of a file -------------------------------------------------------------------------------

@dataclass
class FileScores:
    samples: Samples
    nll_sum: np.ndarray  # [N] float64
    n_tokens: np.ndarray  # [N] int64
    entropy: np.ndarray  # [N] float64, nats
    truncated: np.ndarray  # [N] bool


def score_file(
    judge: Judge, samples: Samples, batch_size: int, eos_text: str = DEFAULT_EOS_TEXT, bos_text: str | None = None
) -> FileScores:
    encoded = encode_texts(judge, samples.texts, eos_text, bos_text, samples.labels())
    scores = score_encoded(judge, encoded, batch_size)
    entropy = np.array([unigram_entropy(ids) for ids in samples.token_ids], dtype=np.float64)
    truncated = np.array([e.truncated for e in encoded], dtype=bool)
    return FileScores(samples, scores.nll_sum, scores.n_tokens, entropy, truncated)


def compute_metrics(
    judge: Judge, scores: FileScores, base: FileScores | None = None, B: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The flat metrics dict of `mdlm evaluate` (gen-PPL, entropy, their CIs, and deltas to a baseline)."""
    log_ppl = bootstrap_ci(scores.nll_sum, scores.n_tokens, B=B, seed=seed)
    ent = bootstrap_ci(scores.entropy, None, B=B, seed=seed)
    m: dict[str, Any] = {
        "schedule": scores.samples.schedule,
        "samples": str(scores.samples.path),
        "num_samples": len(scores.nll_sum),
        "num_tokens": int(scores.n_tokens.sum()),
        "num_truncated": int(scores.truncated.sum()),
        "judge": judge.name,
        "judge_sha256": judge.sha256,
        "judge_bos_id": judge.bos_id,
        "judge_max_length": judge.max_length,
        "gen_ppl": math.exp(log_ppl.point),
        "gen_ppl_ci_low": math.exp(log_ppl.low),
        "gen_ppl_ci_high": math.exp(log_ppl.high),
        "entropy": ent.point,
        "entropy_ci_low": ent.low,
        "entropy_ci_high": ent.high,
        "bootstrap": B,
        "bootstrap_seed": seed,
    }
    if base is not None:
        perm = align_pairs(scores.samples.keys, base.samples.keys, str(scores.samples.path), str(base.samples.path))
        d_log = paired_ci(scores.nll_sum, scores.n_tokens, base.nll_sum[perm], base.n_tokens[perm], B=B, seed=seed)
        d_ent = paired_ci(scores.entropy, None, base.entropy[perm], None, B=B, seed=seed)
        m.update({
            "baseline": str(base.samples.path),
            "baseline_schedule": base.samples.schedule,
            "baseline_gen_ppl": gen_ppl(base.nll_sum, base.n_tokens),
            "delta_log_ppl": d_log.point,
            "delta_log_ppl_ci_low": d_log.low,
            "delta_log_ppl_ci_high": d_log.high,
            "ppl_ratio_pct": _pct(d_log.point),
            "ppl_ratio_pct_ci_low": _pct(d_log.low),
            "ppl_ratio_pct_ci_high": _pct(d_log.high),
            "delta_entropy": d_ent.point,
            "delta_entropy_ci_low": d_ent.low,
            "delta_entropy_ci_high": d_ent.high,
        })
    return m


def _pct(delta_log: float) -> float:
    return 100.0 * math.expm1(delta_log)


def per_sample_path(out: str | os.PathLike) -> Path:
    out = Path(out)
    return out.with_name(f"{out.stem}.per_sample.jsonl")


def per_sample_rows(scores: FileScores) -> list[dict[str, Any]]:
    return [
        {
            "seed": key[0],
            "sample_index": key[1],
            "nll_sum": float(scores.nll_sum[i]),
            "n_tokens": int(scores.n_tokens[i]),
            "entropy": float(scores.entropy[i]),
            "truncated": bool(scores.truncated[i]),
        }
        for i, key in enumerate(scores.samples.keys)
    ]


# ---- command ---------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--samples", required=True, help="sampler JSONL file")
    parser.add_argument("--out", required=True, help="metrics JSON; per-sample scores go to <stem>.per_sample.jsonl")
    parser.add_argument("--judge", help="smollm2-135m, gpt2-large or a model folder (default: profile)")
    parser.add_argument("--baseline", help="all-heavy samples with the same seeds, for paired deltas")
    parser.add_argument("--batch-size", type=int, help="judge batch size (default: profile)")
    parser.add_argument("--bootstrap", type=int, help="bootstrap resamples B (default: profile)")
    parser.add_argument("--seed", type=int, help="bootstrap seed (default: profile)")
    parser.add_argument("--eos-text", help="the MDLM's EOS string in decoded text (default: from the profile's "
                        f"tokenizer, {DEFAULT_EOS_TEXT} for gpt2/bpe-8k, [SEP] for bert-base-uncased)")
    parser.add_argument("--bos-text", help="the MDLM's BOS string, if not the EOS string ([CLS] for bert)")
    parser.add_argument("--profile", help="params.yaml profile (default: the file's `profile` key)")


def main(args: argparse.Namespace) -> int:
    profile = load_profile(args.profile)
    settings = profile["evaluate"] or {}

    def pick(arg, key, default=None):
        return arg if arg is not None else settings.get(key, default)

    judge_name = pick(args.judge, "judge")
    batch_size, B, seed = pick(args.batch_size, "batch_size", 8), pick(args.bootstrap, "bootstrap", 2000), pick(
        args.seed, "seed", 0
    )
    eos_default, bos_default = MDLM_MARKERS.get(profile.get("tokenizer"), (DEFAULT_EOS_TEXT, None))
    eos_text, bos_text = pick(args.eos_text, "eos_text", eos_default), pick(args.bos_text, "bos_text", bos_default)
    if not judge_name:
        raise UserError("params.yaml: evaluate.judge is not set and no --judge given")
    if batch_size < 1 or B < 1:
        raise UserError(f"--batch-size {batch_size} / --bootstrap {B}: expected >= 1")

    samples = read_samples(args.samples)  # bad input fails before the judge loads
    base_samples = read_samples(args.baseline) if args.baseline else None
    if base_samples is not None:
        align_pairs(samples.keys, base_samples.keys, str(samples.path), str(base_samples.path))

    judge = load_judge(judge_name)
    scores = score_file(judge, samples, batch_size, eos_text, bos_text)
    same_file = base_samples is not None and Path(args.baseline).resolve() == Path(args.samples).resolve()
    base = scores if same_file else (score_file(judge, base_samples, batch_size, eos_text, bos_text)
                                     if base_samples else None)
    metrics = compute_metrics(judge, scores, base, B=B, seed=seed)
    metrics["eos_text"] = eos_text
    metrics["bos_text"] = bos_text
    metrics["per_sample"] = str(per_sample_path(args.out))

    # per-sample scores first: metrics.json is the last file written, so its presence means a complete run
    atomic_write_jsonl(per_sample_path(args.out), per_sample_rows(scores))
    atomic_write_json(args.out, metrics)
    print(
        f"{samples.schedule}: gen-PPL {metrics['gen_ppl']:.3f} "
        f"[{metrics['gen_ppl_ci_low']:.3f}, {metrics['gen_ppl_ci_high']:.3f}], "
        f"entropy {metrics['entropy']:.4f} ({metrics['num_samples']} samples, judge {judge.name})"
        + (f", vs baseline {metrics['ppl_ratio_pct']:+.2f}% "
           f"[{metrics['ppl_ratio_pct_ci_low']:+.2f}, {metrics['ppl_ratio_pct_ci_high']:+.2f}]" if base else "")
    )
    return 0
