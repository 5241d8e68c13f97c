"""Checkpoints: our folder format round trip, bad files -> one clear UserError, Lightning checkpoints with the
reference's extra pickled objects, the hash-pinned shipped pair."""

from __future__ import annotations

import json
import pickle

import pytest
import torch
from safetensors.torch import load_file, save_file

from mdlm.checkpoints import (
    CONFIG,
    WEIGHTS,
    load_lightning_ckpt,
    load_model,
    save_model,
    sha256_file,
    verify_shipped,
)
from mdlm.errors import UserError
from mdlm.model import MDLM, DiTConfig

pytestmark = pytest.mark.usefixtures("one_thread")

CFG = DiTConfig(vocab_size=37, hidden_size=16, n_blocks=2, n_heads=2, cond_dim=8, length=8, dropout=0.0)


def random_model(cfg: DiTConfig = CFG, seed: int = 0) -> MDLM:
    torch.manual_seed(seed)
    model = MDLM(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture
def saved(tmp_path):
    model = random_model()
    save_model(model, tmp_path / "m", extra_config={"tokenizer": "bpe-8k"})
    return model, tmp_path / "m"


def test_round_trip(saved):
    model, folder = saved
    loaded = load_model(folder)
    assert loaded.config == model.config and not loaded.training
    for (k, a), (k2, b) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(a, b)
    assert all(k.startswith("backbone.") for k in load_file(folder / WEIGHTS))
    assert json.loads((folder / CONFIG).read_text())["tokenizer"] == "bpe-8k"


def test_bf16_weights_load_as_fp32(tmp_path):
    model = random_model()
    save_model(model, tmp_path / "m", dtype=torch.bfloat16)
    assert load_file(tmp_path / "m" / WEIGHTS)["backbone.vocab_embed.embedding"].dtype == torch.bfloat16
    loaded = load_model(tmp_path / "m")
    w = loaded.backbone.vocab_embed.embedding
    assert w.dtype == torch.float32
    assert torch.equal(w, model.backbone.vocab_embed.embedding.bfloat16().float())


def test_inv_freq_may_be_absent(saved):
    model, folder = saved
    state = read_weights(folder / WEIGHTS)
    del state["backbone.rotary_emb.inv_freq"]
    save_file(state, str(folder / WEIGHTS))
    loaded = load_model(folder)
    assert torch.equal(loaded.backbone.rotary_emb.inv_freq, model.backbone.rotary_emb.inv_freq)
    ids = torch.randint(0, 37, (2, 8))
    with torch.no_grad():
        assert torch.equal(loaded(ids), model(ids))


# ------------------------------------------------------------------------------------------------------------
# bad checkpoints: one UserError naming the file and every problem


def read_weights(path) -> dict[str, torch.Tensor]:
    """Copies: load_file's tensors may map the file, which the tests then overwrite in place."""
    return {k: v.clone() for k, v in load_file(path).items()}


def _edit_weights(folder, fn):
    state = read_weights(folder / WEIGHTS)
    fn(state)
    save_file(state, str(folder / WEIGHTS))


def test_wrong_shapes_listed(saved):
    _, folder = saved
    cfg = json.loads((folder / CONFIG).read_text())
    (folder / CONFIG).write_text(json.dumps({**cfg, "hidden_size": 24}))  # weights say 16
    with pytest.raises(UserError) as err:
        load_model(folder)
    msg = str(err.value)
    assert str(folder / WEIGHTS) in msg and "shape mismatch" in msg
    assert "backbone.blocks.0.attn_out.weight (16, 16) != (24, 24)" in msg and "(+20 more)" in msg


def test_missing_and_unexpected_keys_listed(saved):
    _, folder = saved

    def edit(state):
        del state["backbone.blocks.1.attn_qkv.weight"]
        del state["backbone.output_layer.linear.bias"]
        state["backbone.blocks.2.norm1.weight"] = torch.ones(16)

    _edit_weights(folder, edit)
    with pytest.raises(UserError) as err:
        load_model(folder)
    msg = str(err.value)
    assert ("missing keys [backbone.blocks.1.attn_qkv.weight, backbone.output_layer.linear.bias]" in msg
            and "unexpected keys [backbone.blocks.2.norm1.weight]" in msg)


def test_keys_without_backbone_prefix(saved):
    _, folder = saved
    _edit_weights(folder, lambda s: s.update({k[len("backbone."):]: s.pop(k) for k in list(s)}))
    with pytest.raises(UserError, match="missing keys .*unexpected keys"):
        load_model(folder)


@pytest.mark.parametrize("keep", [0.5, 0.001, 0.0])
def test_truncated_safetensors(saved, keep):
    _, folder = saved
    data = (folder / WEIGHTS).read_bytes()
    (folder / WEIGHTS).write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(UserError, match=f"{WEIGHTS}: not a valid safetensors file"):
        load_model(folder)


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_pickle_where_safetensors_expected(saved, writer):
    model, folder = saved
    if writer == "torch.save":
        torch.save(model.state_dict(), folder / WEIGHTS)
    else:
        (folder / WEIGHTS).write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(UserError, match="is a pickle/zip file, expected safetensors"):
        load_model(folder)


def test_missing_files(saved, tmp_path):
    _, folder = saved
    with pytest.raises(UserError, match="checkpoint folder not found"):
        load_model(tmp_path / "nope")
    (folder / WEIGHTS).unlink()
    with pytest.raises(UserError, match=f"{WEIGHTS}: not found"):
        load_model(folder)
    (folder / CONFIG).unlink()
    with pytest.raises(UserError, match=f"{CONFIG}: not found"):
        load_model(folder)


@pytest.mark.parametrize("config, message", [
    ("{not json", "malformed JSON"),
    ("[1, 2]", "expected a JSON object"),
    (json.dumps({"vocab_size": 37, "hidden_size": 16}), "missing field.s. n_blocks, n_heads, cond_dim, length, time_c"),
    (json.dumps({**CFG.to_dict(), "n_heads": 3}), "must split into 3 heads"),
    (json.dumps({**CFG.to_dict(), "n_blocks": "2"}), "expected positive integers, got n_blocks='2'"),
    (json.dumps({"model_type": "mdlm", "vocab_size": 37, "hidden_dim": 16, "n_blocks": 2, "n_heads": 2,
                 "model_length": 8}), "mdlm-owt config lacks field.s. cond_dim"),
])
def test_bad_config(saved, config, message):
    _, folder = saved
    (folder / CONFIG).write_text(config)
    with pytest.raises(UserError, match=message) as err:
        load_model(folder)
    assert str(folder / CONFIG) in str(err.value)


# ------------------------------------------------------------------------------------------------------------
# Lightning checkpoints


class ForeignConfig:
    """Stands for the OmegaConf config / tokenizer objects that mdlm's checkpoints pickle in hyper_parameters."""

    calls = 0

    def __init__(self, value):
        self.value = value

    def __setstate__(self, state):
        ForeignConfig.calls += 1
        self.__dict__.update(state)


def _lightning(model: MDLM, **extra) -> dict:
    state = {f"backbone.{k}": v for k, v in model.backbone.state_dict().items()}
    ema = {"decay": 0.9999, "num_updates": 5, "shadow_params": [p.detach() * 2 for p in model.backbone.parameters()]}
    return {"state_dict": state, "ema": ema, **extra}


def test_lightning_with_foreign_objects_loads_without_running_them(tmp_path):
    model = random_model()
    path = tmp_path / "mdlm.ckpt"
    foreign = {"config": ForeignConfig({"lr": 3e-4}), "tokenizer": ForeignConfig(1)}
    torch.save(_lightning(model, hyper_parameters=foreign), path)
    with pytest.raises(pickle.UnpicklingError):  # what plain weights_only loading does with mdlm.ckpt
        torch.load(path, weights_only=True)
    loaded = load_lightning_ckpt(path, CFG)
    assert ForeignConfig.calls == 0
    for p, q in zip(loaded.backbone.parameters(), model.backbone.parameters(), strict=True):
        assert torch.equal(p, 2 * q)  # the EMA shadow weights


@pytest.mark.parametrize("ema, message", [
    ({"shadow_params": []}, "EMA holds 0 tensors, expected >= 30"),
    ({"shadow_params": "x"}, "EMA holds 0 tensors"),
    (None, None),  # no EMA -> the raw weights
])
def test_lightning_ema_problems(tmp_path, ema, message):
    model = random_model()
    ckpt = _lightning(model)
    ckpt["ema"] = ema
    torch.save(ckpt, tmp_path / "m.ckpt")
    if message is None:
        loaded = load_lightning_ckpt(tmp_path / "m.ckpt", CFG)
        assert torch.equal(loaded.backbone.blocks[0].attn_qkv.weight, model.backbone.blocks[0].attn_qkv.weight)
    else:
        with pytest.raises(UserError, match=message):
            load_lightning_ckpt(tmp_path / "m.ckpt", CFG)


def test_lightning_ema_shape_mismatch_is_named(tmp_path):
    model = random_model()
    ckpt = _lightning(model)
    ckpt["ema"]["shadow_params"][6] = torch.zeros(3)
    torch.save(ckpt, tmp_path / "m.ckpt")
    with pytest.raises(UserError, match=r"#6 blocks.0.attn_qkv.weight \(3,\) != \(48, 16\)"):
        load_lightning_ckpt(tmp_path / "m.ckpt", CFG)


def test_lightning_bad_files(tmp_path):
    model = random_model()
    with pytest.raises(UserError, match="not found"):
        load_lightning_ckpt(tmp_path / "none.ckpt", CFG)
    torch.save({"weights": 1}, tmp_path / "a.ckpt")
    with pytest.raises(UserError, match="no 'state_dict'"):
        load_lightning_ckpt(tmp_path / "a.ckpt", CFG)
    torch.save(_lightning(model), tmp_path / "b.ckpt")
    data = (tmp_path / "b.ckpt").read_bytes()
    (tmp_path / "b.ckpt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot be read as a weights-only checkpoint"):
        load_lightning_ckpt(tmp_path / "b.ckpt", CFG)
    torch.save(_lightning(model), tmp_path / "c.ckpt")
    with pytest.raises(UserError, match=r"shape mismatch \[backbone.output_layer.linear.bias \(37,\) != \(38,\)"):
        load_lightning_ckpt(tmp_path / "c.ckpt", DiTConfig(**{**CFG.to_dict(), "vocab_size": 38}))


# ------------------------------------------------------------------------------------------------------------
# shipped pair


def test_verify_shipped_refuses_a_changed_file(tmp_path):
    model = random_model()
    for which in ("heavy", "light"):
        save_model(model, tmp_path / which)
    files = {f"{w}/{f}": sha256_file(tmp_path / w / f) for w in ("heavy", "light") for f in (WEIGHTS, CONFIG)}
    (tmp_path / "manifest.json").write_text(json.dumps({"files": files}))
    assert verify_shipped(tmp_path)["files"] == files
    cfg = json.loads((tmp_path / "light" / CONFIG).read_text())
    (tmp_path / "light" / CONFIG).write_text(json.dumps({**cfg, "dropout": 0.5}))
    with pytest.raises(UserError, match="light/config.json: sha256 .* does not match the manifest"):
        verify_shipped(tmp_path)
    (tmp_path / "heavy" / WEIGHTS).unlink()
    with pytest.raises(UserError, match="heavy/model.safetensors: listed in .* but missing"):
        verify_shipped(tmp_path)
