"""Training of one MDLM (heavy or light) on prepared data: the loop, EMA, validation NELBO, checkpoints, DDP.

Determinism: the batch of step k and its masking noise depend only on (seed, k), so a resumed run draws
exactly what an uninterrupted run draws; dropout uses the global RNG, whose state is checkpointed.
Data parallel (torchrun): every rank draws the same global batch and keeps its slice, so the global
batch and the loss (mean over the global batch) are the same as in one process.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

from mdlm.checkpoints import TRAIN_STATE, load_state_dict_checked, save_model
from mdlm.config import ModelSettings, TrainSettings
from mdlm.diffusion import LogLinearNoise, antithetic_times, token_nll
from mdlm.errors import UserError
from mdlm.io import atomic_path, atomic_write_text
from mdlm.model import MDLM, model_config

METRICS = "metrics.jsonl"


@dataclass
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


# ------------------------------------------------------------------------------------------------------------
# data: a deterministic stream of global batches


def batch_indices(n_rows: int, batch: int, step: int, seed: int) -> np.ndarray:
    """Rows of global batch `step`: consecutive slices of a per-epoch permutation (seed, epoch)."""
    start = step * batch
    out = []
    while len(out) < batch:
        epoch, offset = divmod(start + len(out), n_rows)
        perm = np.random.default_rng([seed, epoch]).permutation(n_rows)
        out.extend(perm[offset: offset + batch - len(out)].tolist())
    return np.asarray(out)


def step_generator(seed: int, step: int, device: torch.device) -> torch.Generator:
    g = torch.Generator(device=device)
    g.manual_seed(int(np.random.default_rng([seed, step, 7]).integers(2**62)))
    return g


def masked_batch(x0: torch.Tensor, step_seed: torch.Generator, mask_id: int, noise: LogLinearNoise):
    """Antithetic times and masks for a global batch x0 [B, L]; returns (x_t, t)."""
    B = x0.shape[0]
    t = antithetic_times(B, noise.eps, step_seed, x0.device)
    u = torch.rand(x0.shape, generator=step_seed, device=x0.device)
    x_t = torch.where(u < noise.mask_prob(t)[:, None], torch.full_like(x0, mask_id), x0)
    return x_t, t


# ------------------------------------------------------------------------------------------------------------
# pieces of the loop


class EMA:
    def __init__(self, model: torch.nn.Module, decay: float):
        self.decay = decay
        self.shadow = [p.detach().clone() for p in model.parameters()]

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            s.lerp_(p.detach(), 1 - self.decay)

    @torch.no_grad()
    def copy_to(self, model: torch.nn.Module) -> None:
        for s, p in zip(self.shadow, model.parameters(), strict=True):
            p.copy_(s)


def lr_at(step: int, cfg: TrainSettings) -> float:
    warmup, total = cfg.warmup, cfg.steps
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    if cfg.lr_schedule == "cosine":
        frac = min(1.0, (step - warmup) / max(1, total - warmup))
        floor = cfg.min_lr_frac
        return cfg.lr * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * frac)))
    return cfg.lr


def data_vocab(profile_name: str, tokenizer: str, meta: dict[str, Any]) -> tuple[int, int]:
    """(vocab_size, mask_id) that the prepared data was encoded with (meta.json), else from the tokenizer."""
    tok = meta.get("tokenizer")
    if isinstance(tok, dict) and "vocab_size" in tok and "mask_id" in tok:
        if tok.get("name", tokenizer) != tokenizer:
            raise UserError(f"prepared data of profile {profile_name}: tokenizer {tok.get('name')!r}, "
                            f"params.yaml says {tokenizer!r}; rerun `mdlm prepare`")
        return int(tok["vocab_size"]), int(tok["mask_id"])
    from mdlm.tokenizers import get_tokenizer

    t = get_tokenizer(tokenizer)
    return t.vocab_size, t.mask_id


def unigram_log_probs(train: np.ndarray, vocab_size: int, mask_id: int) -> torch.Tensor:
    """Log unigram frequencies of the training tokens; initialising the output bias with them shortens
    the plateau an MDLM otherwise sits on at the unigram loss."""
    counts = np.bincount(np.asarray(train[: min(len(train), 20000)]).ravel(), minlength=vocab_size)
    counts = counts.astype(np.float64) + 1.0
    counts[mask_id] = 1.0
    return torch.from_numpy(np.log(counts / counts.sum())).float()


@torch.no_grad()
def evaluate_nelbo(model: MDLM, valid: np.ndarray, cfg: TrainSettings, mask_id: int,
                   noise: LogLinearNoise, device: torch.device) -> float:
    """Validation NELBO (nats/token) on cfg.eval_batches fixed batches and a fixed noise draw."""
    model.eval()
    total, count = 0.0, 0
    B = cfg.batch_size
    n_batches = min(cfg.eval_batches, math.ceil(len(valid) / B))
    g = step_generator(cfg.seed + 1, 0, device)
    for i in range(n_batches):
        x0 = torch.from_numpy(np.asarray(valid[i * B: (i + 1) * B]).astype(np.int64)).to(device)
        x_t, t = masked_batch(x0, g, mask_id, noise)
        nll = token_nll(model, x0, x_t, mask_id)
        total += (nll * noise.loss_weight(t)[:, None]).sum().item()
        count += x0.numel()
    model.train()
    return total / max(count, 1)


# ------------------------------------------------------------------------------------------------------------
# checkpointing


def save_checkpoint(folder: Path, model: MDLM, ema: EMA, opt: torch.optim.Optimizer, step: int,
                    tokenizer: str, meta: dict[str, Any]) -> None:
    """EMA weights go to model.safetensors (what sampling uses); everything to resume goes to train_state."""
    raw = {k: v.detach().clone() for k, v in model.state_dict().items()}
    state = {
        "step": step,
        "model": raw,
        "ema": ema.shadow,
        "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "meta": json.dumps(meta),
    }
    with atomic_path(folder / TRAIN_STATE) as tmp:
        torch.save(state, tmp)
    ema.copy_to(model)
    save_model(model, folder, extra_config={"tokenizer": tokenizer, "step": step})
    model.load_state_dict(raw)


def load_checkpoint(folder: Path, model: MDLM, ema: EMA, opt: torch.optim.Optimizer) -> int:
    path = folder / TRAIN_STATE
    if not path.is_file():
        raise UserError(f"{path}: no training state to resume from")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise UserError(f"{path}: unreadable training state ({type(exc).__name__})") from None
    try:
        load_state_dict_checked(model, state["model"], f"{path} (model)")
        if [v.shape for v in state["ema"]] != [s.shape for s in ema.shadow]:
            raise UserError(f"{path}: EMA tensors do not fit the model")
        for s, v in zip(ema.shadow, state["ema"], strict=True):
            s.copy_(v)
        opt.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        return int(state["step"])
    except (KeyError, TypeError, ValueError) as exc:  # an older or foreign train_state.pt
        raise UserError(f"{path}: not a training state of this model ({type(exc).__name__}: {exc})") from None


def _truncate_metrics(path: Path, step: int) -> None:
    if path.is_file():
        keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))


# ------------------------------------------------------------------------------------------------------------
# the loop


@dataclass(frozen=True)
class TrainJob:
    """What to train: profile ``name``'s ``which`` model with these settings, into ``out``."""

    name: str
    which: str
    tokenizer: str
    model: ModelSettings
    settings: TrainSettings
    seq_len: int
    out: Path


@dataclass
class _Run:
    """The mutable state of one training run."""

    model: MDLM
    opt: torch.optim.Optimizer
    ema: EMA
    start: int
    mask_id: int
    train_rows: np.ndarray
    valid_rows: np.ndarray
    meta: dict[str, Any]


def train(job: TrainJob, resume: bool = False, max_minutes: float | None = None, stop_at: int | None = None,
          device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train (or resume) ``job``; checkpoints and metrics.jsonl go to job.out. ``stop_at`` is a planned stop
    after that step (the LR schedule still spans settings.steps); ``max_minutes`` stops on wall time."""
    if job.which not in ("heavy", "light"):
        raise UserError(f"--model must be 'heavy' or 'light', got {job.which!r}")
    cfg = job.settings
    dev = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    ddp = init_distributed(dev)
    if dev.type == "cuda":
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(dev)
    if cfg.batch_size % ddp.world:
        raise UserError(f"train.batch_size {cfg.batch_size} is not divisible by {ddp.world} processes")
    run = _setup(job, dev, ddp, resume)
    net = torch.nn.parallel.DistributedDataParallel(run.model) if ddp.world > 1 else run.model
    noise = LogLinearNoise()
    local = cfg.batch_size // ddp.world
    lo, hi = ddp.rank * local, (ddp.rank + 1) * local
    t_start, clock = time.time(), {"tokens": 0, "since": time.time()}
    bar = tqdm(range(run.start, cfg.steps), initial=run.start, total=cfg.steps,
               disable=not (progress and ddp.main), desc=f"train {job.which}")
    done, last_loss = run.start, float("nan")
    for step in bar:
        last_loss = _train_step(net, run, cfg, noise, step, dev, lo, hi)
        clock["tokens"] += cfg.batch_size * job.seq_len
        done = step + 1
        out_of_time = max_minutes is not None and (time.time() - t_start) > 60 * max_minutes
        if ddp.world > 1 and max_minutes is not None:  # every rank must stop at the same step
            flag = torch.tensor([float(out_of_time)], device=dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            out_of_time = bool(flag.item())
        stop = out_of_time or done == stop_at
        last = done == cfg.steps or stop
        if done % cfg.eval_every == 0 or last:
            last_loss = _log(job, run, ddp, bar, clock, done, step, last_loss, t_start, noise, dev)
        if ddp.main and (done % cfg.ckpt_every == 0 or last):
            save_checkpoint(job.out, run.model, run.ema, run.opt, done, job.tokenizer, run.meta)
        if stop:
            break
    if ddp.world > 1:
        dist.barrier()
        dist.destroy_process_group()
    return {"step": done, "train_loss": last_loss, "out": str(job.out)}


def _setup(job: TrainJob, dev: torch.device, ddp: Dist, resume: bool) -> _Run:
    """Data, model (unigram-initialised output bias), AdamW, EMA; restored from job.out when resuming."""
    from mdlm.data import load_split, read_meta

    cfg = job.settings
    meta = read_meta(job.name)
    vocab_size, mask_id = data_vocab(job.name, job.tokenizer, meta)
    train_rows, valid_rows = load_split(job.name, "train"), load_split(job.name, "valid")
    torch.manual_seed(cfg.seed)
    model = MDLM(model_config(job.model, job.which, vocab_size, job.seq_len), autocast=dev.type == "cuda")
    if cfg.unigram_init:
        with torch.no_grad():
            model.backbone.output_layer.linear.bias.copy_(unigram_log_probs(train_rows, vocab_size, mask_id))
    model.to(dev).train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if p.ndim < 2 or "embedding" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=cfg.lr, betas=(0.9, 0.999), eps=1e-8)
    ema = EMA(model, cfg.ema)
    start = 0
    if resume:
        start = load_checkpoint(job.out, model, ema, opt)
        if ddp.main:
            _truncate_metrics(job.out / METRICS, start)
    data_sha = {split: st.get("sha256") for split, st in meta.get("splits", {}).items()}
    run_meta = {"profile": job.name, "model": job.which, "train": cfg.model_dump(), "data": data_sha,
                "params": model.backbone.num_parameters(), "world_size": ddp.world}
    return _Run(model, opt, ema, start, mask_id, train_rows, valid_rows, run_meta)


def _train_step(net: torch.nn.Module, run: _Run, cfg: TrainSettings, noise: LogLinearNoise, step: int,
                dev: torch.device, lo: int, hi: int) -> float:
    """One optimizer step on this rank's slice [lo, hi) of global batch ``step``; returns the local loss."""
    idx = batch_indices(len(run.train_rows), cfg.batch_size, step, cfg.seed)
    x0 = torch.from_numpy(np.asarray(run.train_rows[idx]).astype(np.int64)).to(dev)  # [B, L]
    x_t, t = masked_batch(x0, step_generator(cfg.seed, step, dev), run.mask_id, noise)
    x0, x_t, t = x0[lo:hi], x_t[lo:hi], t[lo:hi]
    for group in run.opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    nll = token_nll(net, x0, x_t, run.mask_id)  # [local B, L]; bf16 blocks on GPU (model.autocast)
    loss = (nll * noise.loss_weight(t)[:, None]).mean()
    run.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
    run.opt.step()
    run.ema.update(run.model)
    return loss.item()


def _log(job: TrainJob, run: _Run, ddp: Dist, bar, clock: dict[str, float], done: int, step: int,
         last_loss: float, t_start: float, noise: LogLinearNoise, dev: torch.device) -> float:
    """At an evaluation step: the global-batch loss (as one process would log it) and the EMA model's
    validation NELBO, appended to metrics.jsonl by rank 0. Returns the (all-reduced) loss."""
    if ddp.world > 1:
        total = torch.tensor([last_loss], dtype=torch.float64, device=dev)
        dist.all_reduce(total)
        last_loss = total.item() / ddp.world
    if ddp.main:
        now = time.time()
        row = {"step": done, "train_loss": last_loss, "lr": lr_at(step, job.settings),
               "tokens_per_s": clock["tokens"] / max(now - clock["since"], 1e-9), "elapsed_s": now - t_start}
        row["valid_nelbo"] = evaluate_nelbo(_ema_copy(run.model, run.ema), run.valid_rows, job.settings,
                                            run.mask_id, noise, dev)
        row["valid_ppl_bound"] = math.exp(row["valid_nelbo"])
        _append_jsonl(job.out / METRICS, row)
        bar.set_postfix(loss=f"{last_loss:.3f}", val=f"{row['valid_nelbo']:.3f}")
        clock["tokens"], clock["since"] = 0, time.time()
    return last_loss


def _ema_copy(model: MDLM, ema: EMA) -> MDLM:
    """A copy holding the EMA weights. deepcopy, not a fresh MDLM(...): initialising one would draw from the
    global RNG that dropout uses, so evaluating would change the training run (and break resume equality)."""
    ema_model = copy.deepcopy(model)
    ema.copy_to(ema_model)
    return ema_model


def _append_jsonl(path: Path, row: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(row) + "\n")
