"""Golden fixtures from the reference implementation itself (kuleshov-group/mdlm). Not run in CI.

    python tools/reference_fixtures.py PATH/TO/mdlm-checkout [--out tests/fixtures/reference]

Fetch the checkout yourself (git clone of kuleshov-group/mdlm); nothing of it is copied into this repository,
only the numbers it computes. Needs the reference's own inference dependencies: einops, omegaconf,
huggingface_hub, transformers, tokenizers (plus torch and safetensors of this project).

1. DiT (`dit-*.safetensors`): imports the checkout's `models/dit.py` on CPU and runs a few small configs
   with random weights (adaLN and output layers are zero-initialised there, so every parameter is redrawn).
   Its two flash_attn calls are GPU kernels; a fake `flash_attn` module (this file's code) stands in for
   them: `apply_rotary_emb_qkv_` as rotate-half rotary on q and k in place (flash_attn's non-interleaved
   layout), and `flash_attn_varlen_qkvpacked_func` as torch scaled-dot-product attention, non-causal, over
   equal-length sequences. Its `torch.cuda.amp.autocast` regions do nothing on CPU: the fixtures are fp32.
   Each file holds the state dict (keys `backbone.*`, as mdlm-owt), `input_ids`, `sigma`, `expected_logits`,
   and the config in the metadata.
2. Gen-PPL weighting (`genppl-*.safetensors`): imports the checkout's `diffusion.py` and calls its
   `compute_generative_perplexity` and `eval_retokenize` on a stand-in `self`. Stubbed, because only
   training, data loading or logging use them: `lightning` (a LightningModule base class), `torchmetrics`
   (the metric classes; the gen-PPL metric is replaced by a recorder of what `update(nlls, weights)`
   receives), and the checkout's `dataloader`, `models`, `noise_schedule`, `utils` modules. The judge is a
   tiny fake causal LM (logits = a random bigram table, returned by a patched
   `AutoModelForCausalLM.from_pretrained`), its tokenizer a word-level fast tokenizer whose words map 1:1 to
   ids, so the fixtures are on raw id rows. The pad token is set to EOS as the reference's constructor does.
   Each file holds the id rows, the bigram table, and the per-row weighted NLL sums and weight counts the
   reference's metric accumulated (0 for the rows of the dropped remainder batch).
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import sys
import types
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

DIT_CONFIGS = {  # name -> (hidden, heads, blocks, cond_dim, vocab, length, batch, time-conditioned sigma)
    "h32-b2": (32, 2, 2, 16, 23, 12, 2, False),
    "h48-b3-sigma": (48, 4, 3, 24, 31, 10, 3, True),
    "h64-b1-long": (64, 2, 1, 16, 17, 40, 1, False),
}
GENPPL_CASES = {  # name -> (row lengths, EOS at these positions per row, max_length, batch size)
    "chunks-remainder": ([1150, 1050, 300, 700, 20], [[0, 500], [0], [], [0, 3, 650], [7]], 1100, 2),
    "short-rows": ([30, 12, 64, 5, 40, 64, 2], [[0], [0, 6], [], [0], [39], [0, 1, 2], []], 48, 3),
}
EOS_WORD = "<|endoftext|>"
JUDGE_VOCAB = 13  # id 0 = EOS, ids 1.. = words w1..


# ---- flash_attn stand-in ----------------------------------------------------------------------------------

def _rotary_qkv_inplace(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """qkv [B, S, 3, H, D]; cos, sin [S, R/2]: rotate the first R dims of q and k by rotate-half."""
    half = cos.shape[-1]
    c, s = cos[None, :, None, :], sin[None, :, None, :]
    for which in (0, 1):
        x = qkv[:, :, which]
        x1, x2 = x[..., :half].clone(), x[..., half:2 * half].clone()
        x[..., :half] = x1 * c - x2 * s
        x[..., half:2 * half] = x2 * c + x1 * s
    return qkv


def _varlen_attention(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, dropout_p: float = 0.0,
                      causal: bool = False, **_) -> torch.Tensor:
    """qkv [(B S), 3, H, D] of equal-length sequences -> [(B S), H, D], plain softmax attention."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).tolist()
    if set(lengths) != {max_seqlen}:
        raise ValueError("the stand-in handles equal-length sequences only")
    _, three, heads, dim = qkv.shape
    q, k, v = qkv.view(len(lengths), max_seqlen, three, heads, dim).permute(2, 0, 3, 1, 4)  # 3 x [B, H, S, D]
    out = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p, is_causal=causal)  # [B, H, S, D]
    return out.transpose(1, 2).reshape(-1, heads, dim)


def install_fake_flash_attn() -> None:
    root = types.ModuleType("flash_attn")
    layers, rotary = types.ModuleType("flash_attn.layers"), types.ModuleType("flash_attn.layers.rotary")
    interface = types.ModuleType("flash_attn.flash_attn_interface")
    rotary.apply_rotary_emb_qkv_ = _rotary_qkv_inplace
    interface.flash_attn_varlen_qkvpacked_func = _varlen_attention
    root.layers, layers.rotary, root.flash_attn_interface = layers, rotary, interface
    sys.modules.update({"flash_attn": root, "flash_attn.layers": layers, "flash_attn.layers.rotary": rotary,
                        "flash_attn.flash_attn_interface": interface})


def import_file(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# ---- DiT fixtures -------------------------------------------------------------------------------------------

def dit_fixture(dit_module, name: str, spec: tuple) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    hidden, heads, blocks, cond_dim, vocab, length, batch, timed = spec
    config = {"model": {"hidden_size": hidden, "n_heads": heads, "n_blocks": blocks, "cond_dim": cond_dim,
                        "dropout": 0.0, "scale_by_sigma": False, "length": length}}
    seed = sum(map(ord, name))
    torch.manual_seed(seed)
    model = dit_module.DIT(config, vocab_size=vocab).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(0, vocab, (batch, length), generator=gen)
    sigma = torch.rand(batch, generator=gen) * 5 if timed else torch.zeros(batch)
    with torch.no_grad():
        logits = model(ids, sigma).float()
    tensors = {f"backbone.{k}": v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    tensors.update(input_ids=ids, sigma=sigma, expected_logits=logits.contiguous())
    meta = {"config": json.dumps({"vocab_size": vocab, "hidden_size": hidden, "n_blocks": blocks, "n_heads": heads,
                                  "cond_dim": cond_dim, "length": length, "dropout": 0.0,
                                  "time_conditioning": timed}),
            "source": "kuleshov-group/mdlm models/dit.py, CPU fp32, flash_attn stand-in"}
    return tensors, meta


# ---- gen-PPL fixtures ---------------------------------------------------------------------------------------

class BigramJudge(torch.nn.Module):
    """A causal LM whose logits at position i depend on token i only: a random table [V, V]."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.table = torch.nn.Parameter(table, requires_grad=False)

    def forward(self, input_ids, attention_mask=None, **_):
        return (self.table[input_ids],)


class Recorder:
    def __init__(self):
        self.updates: list[tuple[torch.Tensor, torch.Tensor]] = []

    def update(self, value, weight):
        self.updates.append((value.detach().clone(), weight.detach().clone()))


def stub_reference_imports() -> None:
    lightning = types.ModuleType("lightning")
    lightning.LightningModule = torch.nn.Module
    torchmetrics = types.ModuleType("torchmetrics")
    aggregation = types.ModuleType("torchmetrics.aggregation")
    aggregation.MeanMetric = type("MeanMetric", (), {})
    torchmetrics.aggregation = aggregation
    torchmetrics.MetricCollection = type("MetricCollection", (), {})
    sys.modules.update({"lightning": lightning, "torchmetrics": torchmetrics, "torchmetrics.aggregation": aggregation})
    for name in ("dataloader", "models", "noise_schedule", "utils"):
        sys.modules[name] = types.ModuleType(name)


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {EOS_WORD: 0, **{f"w{i}": i for i in range(1, JUDGE_VOCAB)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token=EOS_WORD))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS_WORD)
    tok.pad_token = tok.eos_token  # what the reference's constructor does for a judge without a pad token
    return tok


def genppl_fixture(diffusion, name: str, case: tuple) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    import transformers

    lengths, eos_at, max_length, batch_size = case
    gen = torch.Generator().manual_seed(sum(map(ord, name)))
    rows = []
    for n, eos in zip(lengths, eos_at, strict=True):
        row = torch.randint(1, JUDGE_VOCAB, (n,), generator=gen)
        row[eos] = 0
        rows.append(row)
    texts = [" ".join(EOS_WORD if t == 0 else f"w{t}" for t in row.tolist()) for row in rows]
    table = torch.randn(JUDGE_VOCAB, JUDGE_VOCAB, generator=gen) * 2
    tok = word_tokenizer()
    assert [tok(t)["input_ids"] for t in texts] == [r.tolist() for r in rows]

    recorder = Recorder()
    stand_in = types.SimpleNamespace(
        gen_ppl_eval_model_name_or_path="fake-bigram-judge", device="cpu", eval_model_tokenizer=tok,
        gen_ppl_metric=recorder,
        config=types.SimpleNamespace(model=types.SimpleNamespace(length=max_length),
                                     eval=types.SimpleNamespace(perplexity_batch_size=batch_size)))
    stand_in.eval_retokenize = functools.partial(diffusion.Diffusion.eval_retokenize, stand_in)
    original = transformers.AutoModelForCausalLM
    transformers.AutoModelForCausalLM = types.SimpleNamespace(from_pretrained=lambda *a, **k: BigramJudge(table))
    try:
        diffusion.Diffusion.compute_generative_perplexity(stand_in, texts, retokenize=True, max_length=max_length)
    finally:
        transformers.AutoModelForCausalLM = original

    # per-row sums: updates come batch by batch, chunk by chunk, rows in order within a batch
    n_rows = len(rows)
    nll_sum = torch.zeros(n_rows, dtype=torch.float64)
    n_tokens = torch.zeros(n_rows, dtype=torch.int64)
    batch = min(batch_size, n_rows)
    chunks = None
    for k, (nlls, weights) in enumerate(recorder.updates):
        if chunks is None:
            chunks = -(-min(max(lengths), max_length) // 1024)
        lo = (k // chunks) * batch
        nll_sum[lo:lo + nlls.shape[0]] += (nlls.double() * weights.double()).sum(-1)
        n_tokens[lo:lo + nlls.shape[0]] += weights.long().sum(-1)
    padded = torch.zeros(n_rows, max(lengths), dtype=torch.int32)
    for i, row in enumerate(rows):
        padded[i, :len(row)] = row.int()
    tensors = {"ids": padded, "lengths": torch.tensor(lengths, dtype=torch.int32), "bigram_table": table,
               "expected_nll_sum": nll_sum, "expected_n_tokens": n_tokens}
    meta = {"eos_id": "0", "max_length": str(max_length), "batch_size": str(batch_size), "context": "1024",
            "source": "kuleshov-group/mdlm diffusion.py compute_generative_perplexity, fake bigram judge"}
    return tensors, meta


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkout", type=Path, help="a checkout of kuleshov-group/mdlm")
    parser.add_argument("--out", type=Path, default=Path("tests/fixtures/reference"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    install_fake_flash_attn()
    dit = import_file("reference_dit", args.checkout / "models" / "dit.py")
    stub_reference_imports()
    sys.path.insert(0, str(args.checkout))
    diffusion = import_file("reference_diffusion", args.checkout / "diffusion.py")
    args.out.mkdir(parents=True, exist_ok=True)
    for name, spec in DIT_CONFIGS.items():
        tensors, meta = dit_fixture(dit, name, spec)
        save_file(tensors, str(args.out / f"dit-{name}.safetensors"), metadata=meta)
    for name, case in GENPPL_CASES.items():
        tensors, meta = genppl_fixture(diffusion, name, case)
        save_file(tensors, str(args.out / f"genppl-{name}.safetensors"), metadata=meta)
    total = sum(f.stat().st_size for f in args.out.glob("*.safetensors"))
    print(f"wrote {len(DIT_CONFIGS) + len(GENPPL_CASES)} fixtures to {args.out} ({total / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
