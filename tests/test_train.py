"""Training on the smoke profile: outputs, resume == uninterrupted (bit-identical), DDP == one process,
and bad inputs -> exit status 2 with one line on stderr.

The project root is a temporary folder (MDLM_ROOT) with a copy of params.yaml and prepared data written
directly in the layout of `mdlm prepare` (data/prepared/smoke/{train,valid,test}.bin + meta.json)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from mdlm import cli
from mdlm.checkpoints import CONFIG, TRAIN_STATE, WEIGHTS, load_model, load_pair
from mdlm.config import TrainSettings
from mdlm.errors import UserError
from mdlm.model import model_config
from mdlm.profiles import load_profile
from mdlm.train import EMA, METRICS, TrainJob, batch_indices, lr_at, train

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parents[1]
VOCAB, MASK_ID, EOT = 8192, 1, 0  # bpe-8k ids


@pytest.fixture
def root(smoke_root):
    return smoke_root


def job(which: str, out: Path, dropout: float | None = None, **train_overrides) -> TrainJob:
    """The smoke profile's ``which`` model with some train settings (and the dropout) changed."""
    p = load_profile("smoke")
    model = p.model if dropout is None else p.model.model_copy(update={"dropout": dropout})
    return TrainJob(p.name, which, p.tokenizer, model, p.train.model_copy(update=train_overrides),
                    p.data.seq_len, Path(out))


def load_smoke_pair():
    p = load_profile("smoke")
    return load_pair(p.name, p.checkpoints)


def read_state(folder: Path) -> dict:
    return torch.load(folder / TRAIN_STATE, weights_only=True)


def metrics(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / METRICS).read_text().splitlines()]


# ------------------------------------------------------------------------------------------------------------
# unit pieces


def test_batches_cover_each_row_once_per_epoch():
    n, b = 10, 4
    seen = np.concatenate([batch_indices(n, b, step, seed=0) for step in range(5)])  # 20 rows = 2 epochs
    assert sorted(seen[:10]) == list(range(10)) and sorted(seen[10:]) == list(range(10))
    assert np.array_equal(batch_indices(n, b, 3, seed=0), batch_indices(n, b, 3, seed=0))
    assert not np.array_equal(seen[:10], np.concatenate([batch_indices(n, b, s, seed=1) for s in range(5)])[:10])


def test_lr_schedule():
    cfg = TrainSettings(lr=1.0, warmup=4, steps=14, batch_size=1)
    assert [lr_at(s, cfg) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    cos = cfg.model_copy(update={"lr_schedule": "cosine", "min_lr_frac": 0.1})
    assert lr_at(4, cos) == pytest.approx(1.0) and lr_at(14, cos) == pytest.approx(0.1)
    assert lr_at(9, cos) == pytest.approx(0.55)


def test_ema_update():
    lin = torch.nn.Linear(2, 2)
    ema = EMA(lin, decay=0.9)
    w0 = lin.weight.detach().clone()
    with torch.no_grad():
        lin.weight.add_(1.0)
    ema.update(lin)
    assert torch.allclose(ema.shadow[0], w0 + 0.1)


# ------------------------------------------------------------------------------------------------------------
# training runs


def test_smoke_training_outputs(root):
    out = root / "run"
    result = train(job("heavy", out, eval_every=5, ckpt_every=5, steps=8), progress=False)
    assert result["step"] == 8 and np.isfinite(result["train_loss"])
    assert sorted(p.name for p in out.iterdir()) == sorted([WEIGHTS, CONFIG, TRAIN_STATE, METRICS])
    rows = metrics(out)
    assert [r["step"] for r in rows] == [5, 8]
    assert all(np.isfinite(r["valid_nelbo"]) and r["valid_ppl_bound"] > 1 for r in rows)
    config = json.loads((out / CONFIG).read_text())
    assert config["tokenizer"] == "bpe-8k" and config["step"] == 8
    model = load_model(out)
    assert model.config == model_config(load_profile("smoke").model, "heavy", VOCAB, 32)
    # model.safetensors holds the EMA weights; train_state.pt the raw weights and the EMA list
    state = read_state(out)
    assert state["step"] == 8 and json.loads(state["meta"])["data"]["train"] == "synthetic-train"
    for (name, p), shadow in zip(model.named_parameters(), state["ema"], strict=True):
        assert torch.equal(p, shadow), name
    raw = state["model"]["backbone.blocks.0.attn_qkv.weight"]
    assert not torch.equal(raw, model.backbone.blocks[0].attn_qkv.weight)
    bias = model.backbone.output_layer.linear.bias  # unigram init (add-one counts); the mask column gets no gradient
    assert bias[MASK_ID].item() == pytest.approx(-np.log(40 * 32 + VOCAB), abs=1e-5)
    assert bias[EOT] > bias[MASK_ID] + 3
    # resuming a finished run trains nothing and reports the step it is at
    assert train(job("heavy", out, steps=8), resume=True, progress=False)["step"] == 8
    assert [r["step"] for r in metrics(out)] == [5, 8]


def test_resume_is_bit_identical_to_an_uninterrupted_run(root):
    """8 steps straight vs 4 + resume to 8, with dropout on (its RNG stream is part of the state) and an
    interruption that is not an evaluation step (evaluating must not draw from that stream)."""
    straight, split = root / "straight", root / "split"
    settings = dict(dropout=0.1, eval_every=3, ckpt_every=3)
    train(job("light", straight, steps=8, **settings), progress=False)
    train(job("light", split, steps=4, **settings), progress=False)
    train(job("light", split, steps=8, **settings), resume=True, progress=False)
    a, b = load_file(straight / WEIGHTS), load_file(split / WEIGHTS)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = read_state(straight), read_state(split)
    assert sa["step"] == sb["step"] == 8
    assert all(torch.equal(sa["model"][k], sb["model"][k]) for k in sa["model"])
    assert all(torch.equal(x, y) for x, y in zip(sa["ema"], sb["ema"], strict=True))
    oa, ob = sa["optimizer"]["state"], sb["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    assert all(torch.equal(oa[i][k], ob[i][k]) for i in oa for k in oa[i])
    assert torch.equal(sa["torch_rng"], sb["torch_rng"])
    ma, mb = {r["step"]: r for r in metrics(straight)}, {r["step"]: r for r in metrics(split)}
    assert sorted(ma) == [3, 6, 8] and sorted(mb) == [3, 4, 6, 8]  # the interrupted run also logged step 4
    for s in ma:
        assert (ma[s]["train_loss"], ma[s]["valid_nelbo"]) == (mb[s]["train_loss"], mb[s]["valid_nelbo"])


def test_ddp_two_processes_match_one(root):
    """torchrun, 2 CPU processes (gloo), local batch 4 each == one process with the global batch 8."""
    one, two = root / "one", root / "two"
    train(job("light", one, steps=5), progress=False)
    env = {**os.environ, "MDLM_ROOT": str(root), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "mdlm",
           "train", "--profile", "smoke", "--model", "light", "--out", str(two), "--steps", "5", "--device", "cpu"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = read_state(two)
    assert json.loads(state["meta"])["world_size"] == 2 and state["step"] == 5
    a, b = load_file(one / WEIGHTS), load_file(two / WEIGHTS)
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-5
    raw1, raw2 = read_state(one)["model"], state["model"]
    moved = max((raw1[k] - a[k]).abs().max().item() for k in a)
    assert moved > 1e-3  # training changed the weights by much more than the tolerance
    assert max((raw1[k] - raw2[k]).abs().max().item() for k in raw1) < 1e-5
    r1, r2 = metrics(one)[-1], metrics(two)[-1]
    assert r1["step"] == r2["step"] == 5
    assert r2["train_loss"] == pytest.approx(r1["train_loss"], rel=1e-5)  # the global-batch loss is logged
    assert r2["valid_nelbo"] == pytest.approx(r1["valid_nelbo"], rel=1e-5)


# ------------------------------------------------------------------------------------------------------------
# bad input: one line on stderr, status 2


def run_cli(capsys, *argv) -> tuple[int, str]:
    code = cli.main(list(argv))
    err = capsys.readouterr().err
    return code, err


def assert_one_line(err: str, *needles: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    for needle in needles:
        assert needle in lines[0], lines[0]


TRAIN = ["train", "--profile", "smoke", "--model", "heavy"]


def test_stop_at_then_resume_keeps_the_lr_schedule(root):
    """--stop-at interrupts a run without shortening its (cosine) LR schedule: resuming matches a straight run."""
    settings = dict(eval_every=3, ckpt_every=3, lr_schedule="cosine", warmup=2, steps=8)
    straight, split = root / "straight", root / "split"
    train(job("light", straight, **settings), progress=False)
    train(job("light", split, **settings), stop_at=5, progress=False)
    assert read_state(split)["step"] == 5
    train(job("light", split, **settings), resume=True, progress=False)
    a, b = load_file(straight / WEIGHTS), load_file(split / WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_resume_without_or_with_bad_training_state(root, capsys):
    out = root / "run"
    code, err = run_cli(capsys, *TRAIN, "--resume", "--out", str(out))
    assert code == 2
    assert_one_line(err, str(out / TRAIN_STATE), "no training state to resume from")

    train(job("light", out, steps=2), progress=False)  # a light model's state, resumed as heavy
    code, err = run_cli(capsys, *TRAIN, "--resume", "--out", str(out), "--steps", "3")
    assert code == 2
    assert_one_line(err, str(out / TRAIN_STATE), "does not fit the model", "missing keys [backbone.blocks.10.")

    data = (out / TRAIN_STATE).read_bytes()
    (out / TRAIN_STATE).write_bytes(data[: len(data) // 3])
    code, err = run_cli(capsys, *TRAIN, "--resume", "--out", str(out), "--steps", "3")
    assert code == 2
    assert_one_line(err, str(out / TRAIN_STATE), "unreadable training state")


def test_missing_prepared_data(root, capsys):
    shutil.rmtree(root / "data")
    code, err = run_cli(capsys, *TRAIN, "--out", str(root / "run"))
    assert code == 2
    assert_one_line(err, "meta.json: missing", "mdlm prepare --profile smoke")


def test_prepared_with_another_tokenizer(root):
    meta_path = root / "data" / "prepared" / "smoke" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["tokenizer"]["name"] = "gpt2"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(UserError, match="tokenizer 'gpt2', params.yaml says 'bpe-8k'; rerun `mdlm prepare`"):
        train(job("heavy", root / "run", steps=1), progress=False)


@pytest.mark.parametrize("damage", ["truncated", "pickle", "shapes", "missing config"])
def test_bad_trained_checkpoint(root, damage):
    """What `mdlm sample` & co. load for a profile with checkpoints.source: train (runs/smoke/models/*)."""
    models = root / "runs" / "smoke" / "models"
    train(job("light", models / "light", steps=1), progress=False)
    shutil.copytree(models / "light", models / "heavy")
    assert set(load_smoke_pair()) == {"heavy", "light"}
    weights, config = models / "heavy" / WEIGHTS, models / "heavy" / CONFIG
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
        message = f"{weights}: not a valid safetensors file"
    elif damage == "pickle":
        state = {k: v.clone() for k, v in load_file(weights).items()}  # not views of the file we overwrite
        torch.save(state, weights)
        message = f"{weights}: is a pickle/zip file, expected safetensors"
    elif damage == "shapes":
        config.write_text(json.dumps({**json.loads(config.read_text()), "hidden_size": 64}))
        message = f"{weights}: checkpoint does not fit the model: shape mismatch [backbone.blocks.0.adaLN"
    else:
        config.unlink()
        message = f"{config}: not found"
    with pytest.raises(UserError) as err:
        load_smoke_pair()
    assert str(err.value).startswith(message) and "\n" not in str(err.value)


def test_cli_process_exits_2_without_traceback(root):
    proc = subprocess.run([sys.executable, "-m", "mdlm", *TRAIN, "--resume", "--out", str(root / "none")],
                          env={**os.environ, "MDLM_ROOT": str(root), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert_one_line(proc.stderr, "no training state to resume from")
