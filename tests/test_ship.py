"""Shipping a trained pair (mdlm ship) and installing it (mdlm train with checkpoints.source: shipped)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mdlm import cli
from mdlm.checkpoints import MANIFEST, WEIGHTS, install_shipped, load_pair, verify_shipped
from mdlm.errors import UserError
from mdlm.profiles import load_profile
from mdlm.ship import ship
from mdlm.train import TrainJob, train

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def shipped(smoke_root):
    """Train the smoke pair for a few steps, ship it to checkpoints/smoke, switch the profile to it."""
    p = load_profile("smoke")
    settings = p.train.model_copy(update={"steps": 2, "eval_every": 2, "ckpt_every": 2})
    for which in ("heavy", "light"):
        train(TrainJob(p.name, which, p.tokenizer, p.model, settings, p.data.seq_len, smoke_root / "work" / which),
              progress=False)
    manifest = ship(p.name, p.tokenizer, settings, p.data.seq_len, {"tokenizer": p.tokenizer},
                    smoke_root / "checkpoints" / "smoke", smoke_root / "work", command="mdlm train (test)")
    params = yaml.safe_load((smoke_root / "params.yaml").read_text())
    params["profiles"]["smoke"]["checkpoints"] = {"source": "shipped", "dir": "checkpoints/smoke"}
    (smoke_root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return smoke_root, manifest


def test_manifest_pins_every_file_and_records_the_run(shipped):
    root, manifest = shipped
    assert set(manifest["files"]) == {f"{w}/{f}" for w in ("heavy", "light") for f in (WEIGHTS, "config.json")}
    assert manifest["command"] == "mdlm train (test)"
    for which in ("heavy", "light"):
        entry = manifest["models"][which]
        assert entry["steps"] == 2 and entry["valid_nelbo_bf16_full_split"] > 0
    assert json.loads((root / "checkpoints" / "smoke" / MANIFEST).read_text()) == manifest
    verify_shipped(root / "checkpoints" / "smoke")


def test_train_installs_the_shipped_pair_and_loading_verifies_it(shipped):
    root, _ = shipped
    profile = load_profile("smoke")
    assert cli.main(["train", "--profile", "smoke", "--model", "heavy"]) == 0
    assert (root / "runs" / "smoke" / "models" / "heavy" / WEIGHTS).is_file()
    models = load_pair(profile.name, profile.checkpoints)
    assert models["heavy"].config.n_blocks == 12 and models["light"].config.n_blocks == 4


def test_a_tampered_weight_file_is_refused(shipped):
    root, _ = shipped
    weights = root / "checkpoints" / "smoke" / "light" / WEIGHTS
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    profile = load_profile("smoke")
    with pytest.raises(UserError, match="does not match the manifest"):
        load_pair(profile.name, profile.checkpoints)
    with pytest.raises(UserError, match="does not match the manifest"):
        install_shipped(profile.checkpoints, "light", root / "installed")


def test_the_shipped_tiny_pair_verifies_and_matches_the_tiny_profile(monkeypatch):
    """The committed checkpoints/tiny pair: hashes match its manifest, and both models load into the tiny
    profile's heavy (12 blocks) and light (4 blocks) architecture."""
    from mdlm.checkpoints import load_model
    from mdlm.paths import project_root

    monkeypatch.delenv("MDLM_ROOT", raising=False)
    monkeypatch.chdir(ROOT)
    profile = load_profile("tiny")
    folder = project_root() / profile.checkpoints.dir
    manifest = verify_shipped(folder)
    assert manifest["profile"] == "tiny"
    for which, blocks in (("heavy", 12), ("light", 4)):
        model = load_model(folder / which)
        assert model.config.n_blocks == blocks == profile.model.blocks(which)
        assert model.config.hidden_size == profile.model.hidden
        assert model.backbone.num_parameters() == manifest["models"][which]["params"]


def test_train_wall_time_sums_the_resumed_segments():
    from mdlm.ship import train_wall_s

    history = [{"step": 1, "elapsed_s": 10.0}, {"step": 2, "elapsed_s": 20.0},  # first run
               {"step": 3, "elapsed_s": 5.0}, {"step": 4}, {"step": 5, "elapsed_s": 12.5}]  # resumed
    assert train_wall_s(history) == 32.5
    assert train_wall_s([{"step": 1}]) is None
