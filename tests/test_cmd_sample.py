"""`mdlm sample` end to end, with toy models and a toy tokenizer."""

import argparse
import json
import types
from pathlib import Path

import pytest
import torch

from mdlm import sample_runs, sampler
from mdlm.commands import sample as sample_cmd
from mdlm.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


class ToyModel(torch.nn.Module):
    """A context-dependent time-agnostic 'DiT': logits = E[ids] + mean over the row of E[ids]."""

    def __init__(self, vocab, seed):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.nn.Parameter(torch.randn(vocab, vocab, generator=g))
        self.config = types.SimpleNamespace(time_conditioning=False)

    def forward(self, ids, sigma=None, select=None):
        e = self.emb[ids]
        logits = e + e.mean(1, keepdim=True)
        return logits if select is None else logits[select]  # select = (rows, pos): the sampler's positions


@pytest.fixture
def fake_stack(monkeypatch, toy_tokenizer):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))
    models = {"heavy": ToyModel(11, 0), "light": ToyModel(11, 1)}
    monkeypatch.setattr(sample_cmd, "profile_denoisers",
                        lambda profile, device="cpu": {k: sampler.denoiser_from_model(m) for k, m in models.items()})
    monkeypatch.setattr(sample_cmd, "get_tokenizer", lambda name: toy_tokenizer)


def cli(*argv):
    parser = argparse.ArgumentParser()
    sample_cmd.add_arguments(parser)
    return sample_cmd.main(parser.parse_args(list(argv)))


def test_cli_writes_identical_samples_and_meta(fake_stack, tmp_path):
    out = tmp_path / "samples" / "sandwich.jsonl"
    args = ["--profile", "smoke", "--schedule", "sandwich", "--num-samples", "5", "--batch-size", "2",
            "--prefix", "ab", "--out", str(out), "--no-progress"]
    assert cli(*args) == 0
    first = out.read_bytes()
    meta = json.loads(sample_runs.meta_path(out).read_text())
    assert cli(*args) == 0
    assert out.read_bytes() == first  # bit-identical for the same seed
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert [r["sample_index"] for r in rows] == [0, 1, 2, 3, 4]
    prefix = [0, 1 + ord("a") % 9, 1 + ord("b") % 9]  # BOS + the text's tokens
    for r in rows:
        assert r["token_ids"][:3] == prefix and len(r["token_ids"]) == 32  # smoke seq_len
        assert r["schedule"] == "sandwich" and r["steps"] == 64 and r["prefix_len"] == 3
        assert r["predictor"] == "ddpm_cache" and r["precision"] == "float64" and r["top_p"] == 1.0
        assert r["schedule_sha256"] == meta["schedule"]["sha256"]
        assert 10 not in r["token_ids"] and r["text"].startswith("0 ")
    import hashlib

    assert meta["samples_sha256"] == hashlib.sha256(first).hexdigest()
    assert meta["schedule"]["segments"] == "L8,H48,L8" and meta["noise_removal_model"] == "light"
    assert meta["row_forwards"]["heavy"] == sum(r["row_forwards"]["heavy"] for r in rows)
    # ddpm_cache keeps every sample in flight: one run, one wall time
    assert meta["num_samples"] == 5 and meta["batch_size"] == 2 and len(meta["batch_wall_time_s"]) == 1

    # the same samples with another batch size and the reference predictor
    other = tmp_path / "other.jsonl"
    assert cli(*args[:-3], "--batch-size", "5", "--predictor", "ddpm", "--out", str(other), "--no-progress") == 0
    assert [json.loads(x)["token_ids"] for x in other.read_text().splitlines()] == [r["token_ids"] for r in rows]


@pytest.mark.parametrize("workers", ["1", "2"])
def test_unwritable_output_is_one_line_before_any_sampling(fake_stack, tmp_path, monkeypatch, workers):
    """An output that cannot be written fails at once (no worker launched, no model loaded), not after the run."""
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    launched = []
    monkeypatch.setattr(sample_cmd, "relaunch", lambda argv, n: launched.append(n) or 0)
    monkeypatch.setattr(sample_cmd, "profile_denoisers", lambda *a, **k: launched.append("models"))
    with pytest.raises(UserError, match="a-file/x.jsonl: cannot write the output there") as exc:
        cli("--profile", "smoke", "--schedule", "sandwich", "--num-samples", "2", "--workers", workers,
            "--out", str(blocker / "x.jsonl"), "--no-progress")
    assert "\n" not in str(exc.value) and launched == []
    assert blocker.read_text() == "x"


def test_cli_prefix_file_jsonl_and_errors(fake_stack, tmp_path):
    prefixes = tmp_path / "p.jsonl"
    prefixes.write_text('{"text": "a"}\n{"token_ids": [3, 4, 5]}\n')
    out = tmp_path / "o.jsonl"
    assert cli("--profile", "smoke", "--schedule", "all-heavy", "--num-samples", "2", "--steps", "8",
               "--prefix-file", str(prefixes), "--no-prefix-bos", "--out", str(out), "--no-progress") == 0
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert rows[0]["token_ids"][:1] == [1 + ord("a") % 9] and rows[1]["token_ids"][:3] == [3, 4, 5]
    with pytest.raises(UserError, match="2 prefixes, expected at least --num-samples = 3"):
        cli("--profile", "smoke", "--schedule", "all-heavy", "--num-samples", "3", "--prefix-file", str(prefixes),
            "--out", str(out))
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nsegments: [H10]\n")
    with pytest.raises(UserError, match="sum to 10 steps, expected 64"):
        cli("--profile", "smoke", "--schedule", str(bad), "--out", str(out))
    with pytest.raises(UserError, match=r"sample.num_samples \(command-line override\): .*greater than 0"):
        cli("--profile", "smoke", "--schedule", "sandwich", "--num-samples", "0", "--out", str(out))


