"""DiT backbone: parity with an independent float64 forward written from the reference DiT's description,
loaded through both mdlm-owt formats; sizes and the state-dict layout of mdlm-owt (the golden fixtures from the
reference's own code are in test_reference_fixtures.py)."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import save_file

from mdlm.checkpoints import load_lightning_ckpt, load_model
from mdlm.model import MDLM, DiTConfig, model_config, size_config

pytestmark = pytest.mark.usefixtures("one_thread")

# ------------------------------------------------------------------------------------------------------------
# the reference forward, from the spec only (no mdlm.model code): state dict (keys without `backbone.`) -> logits


def ref_layer_norm(x, w):  # fp32-in-reference LayerNorm: no affine, eps 1e-5, times a learned weight
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + 1e-5) * w


def ref_linear(x, sd, name, bias=True):
    y = x @ sd[f"{name}.weight"].T
    return y + sd[f"{name}.bias"] if bias else y


def ref_gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def ref_rotary(x, pos, head_dim):
    """GPT-NeoX rotate-half: dims j and j + head_dim/2 form a pair rotated by angle pos * 10000^(-2j/head_dim)."""
    half = head_dim // 2
    inv_freq = 10000.0 ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # [half]
    ang = pos[:, None] * inv_freq[None]  # [L, half]
    cos, sin = ang.cos()[:, None, :], ang.sin()[:, None, :]  # [L, 1, half], broadcast over heads
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)


def reference_logits(sd: dict[str, torch.Tensor], cfg: dict, ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    sd = {k: v.double() for k, v in sd.items()}
    B, L = ids.shape
    d, H = cfg["hidden"], cfg["heads"]
    hd = d // H
    if not cfg["time_conditioning"]:
        sigma = torch.zeros(B)
    freqs = torch.exp(-math.log(10000.0) * torch.arange(128, dtype=torch.float64) / 128)
    args = sigma.double()[:, None] * freqs[None]
    t_emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # [B, 256], cos half first
    c = torch.nn.functional.silu(
        ref_linear(torch.nn.functional.silu(ref_linear(t_emb, sd, "sigma_map.mlp.0")), sd, "sigma_map.mlp.2"))
    h = sd["vocab_embed.embedding"][ids]  # [B, L, d]
    pos = torch.arange(L, dtype=torch.float64)
    for i in range(cfg["blocks"]):
        p = f"blocks.{i}"
        mod = ref_linear(c, sd, f"{p}.adaLN_modulation")[:, None, :]
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=-1)
        a = ref_layer_norm(h, sd[f"{p}.norm1.weight"]) * (1 + scale_msa) + shift_msa
        qkv = ref_linear(a, sd, f"{p}.attn_qkv", bias=False).reshape(B, L, 3, H, hd)
        q, k, v = ref_rotary(qkv[:, :, 0], pos, hd), ref_rotary(qkv[:, :, 1], pos, hd), qkv[:, :, 2]
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(hd)  # bidirectional, no mask
        att = torch.einsum("bhqk,bkhe->bqhe", scores.softmax(-1), v).reshape(B, L, d)
        h = h + gate_msa * ref_linear(att, sd, f"{p}.attn_out", bias=False)
        m = ref_layer_norm(h, sd[f"{p}.norm2.weight"]) * (1 + scale_mlp) + shift_mlp
        h = h + gate_mlp * ref_linear(ref_gelu_tanh(ref_linear(m, sd, f"{p}.mlp.0")), sd, f"{p}.mlp.2")
    shift, scale = ref_linear(c, sd, "output_layer.adaLN_modulation")[:, None, :].chunk(2, dim=-1)
    out = ref_layer_norm(h, sd["output_layer.norm_final.weight"]) * (1 + scale) + shift
    return ref_linear(out, sd, "output_layer.linear")  # [B, L, V] raw logits


def ref_param_names(n_blocks: int) -> list[str]:
    """backbone.parameters() order of the reference DIT (module registration order, mdlm models/dit.py)."""
    block = ["norm1.weight", "attn_qkv.weight", "attn_out.weight", "norm2.weight", "mlp.0.weight", "mlp.0.bias",
             "mlp.2.weight", "mlp.2.bias", "adaLN_modulation.weight", "adaLN_modulation.bias"]
    return (["vocab_embed.embedding", "sigma_map.mlp.0.weight", "sigma_map.mlp.0.bias", "sigma_map.mlp.2.weight",
             "sigma_map.mlp.2.bias"]
            + [f"blocks.{i}.{n}" for i in range(n_blocks) for n in block]
            + ["output_layer.norm_final.weight", "output_layer.linear.weight", "output_layer.linear.bias",
               "output_layer.adaLN_modulation.weight", "output_layer.adaLN_modulation.bias"])


def ref_shapes(V: int, d: int, cond: int, n_blocks: int, heads: int) -> dict[str, tuple[int, ...]]:
    """The state-dict keys and shapes of the mdlm-owt layout, for any size."""
    shapes = {"vocab_embed.embedding": (V, d), "sigma_map.mlp.0.weight": (cond, 256), "sigma_map.mlp.0.bias": (cond,),
              "sigma_map.mlp.2.weight": (cond, cond), "sigma_map.mlp.2.bias": (cond,),
              "rotary_emb.inv_freq": (d // heads // 2,),
              "output_layer.norm_final.weight": (d,), "output_layer.adaLN_modulation.weight": (2 * d, cond),
              "output_layer.adaLN_modulation.bias": (2 * d,), "output_layer.linear.weight": (V, d),
              "output_layer.linear.bias": (V,)}
    for i in range(n_blocks):
        shapes.update({f"blocks.{i}.norm1.weight": (d,), f"blocks.{i}.norm2.weight": (d,),
                       f"blocks.{i}.attn_qkv.weight": (3 * d, d), f"blocks.{i}.attn_out.weight": (d, d),
                       f"blocks.{i}.mlp.0.weight": (4 * d, d), f"blocks.{i}.mlp.0.bias": (4 * d,),
                       f"blocks.{i}.mlp.2.weight": (d, 4 * d), f"blocks.{i}.mlp.2.bias": (d,),
                       f"blocks.{i}.adaLN_modulation.weight": (6 * d, cond),
                       f"blocks.{i}.adaLN_modulation.bias": (6 * d,)})
    return shapes


# ------------------------------------------------------------------------------------------------------------
# a small random model written in the two mdlm-owt formats

SMALL = dict(vocab=67, hidden=48, heads=3, cond=24, blocks=3, length=16)


def random_state(cfg: dict, seed: int) -> dict[str, torch.Tensor]:
    """Every parameter random (also the zero-initialised adaLN and output layers), keys without `backbone.`."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for name, shape in ref_shapes(cfg["vocab"], cfg["hidden"], cfg["cond"], cfg["blocks"], cfg["heads"]).items():
        if name == "rotary_emb.inv_freq":
            continue
        if name.endswith("norm1.weight") or name.endswith("norm2.weight") or name.endswith("norm_final.weight"):
            sd[name] = 1 + 0.2 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[-1] if len(shape) == 2 else 1
            scale = 0.5 if name == "vocab_embed.embedding" else (0.2 if len(shape) == 1 else 1 / math.sqrt(fan_in))
            sd[name] = scale * torch.randn(shape, generator=g)
    return sd


def hf_config_json(cfg: dict, time_conditioning: bool) -> dict:
    return {"architectures": ["MDLM"], "auto_map": {"AutoConfig": "configuration_mdlm.MDLMConfig"},
            "model_type": "mdlm", "vocab_size": cfg["vocab"], "model_length": cfg["length"],
            "hidden_dim": cfg["hidden"], "cond_dim": cfg["cond"], "n_blocks": cfg["blocks"], "n_heads": cfg["heads"],
            "dropout": 0.1, "time_conditioning": time_conditioning, "return_dict": False}


def write_hf_folder(folder, sd: dict, cfg: dict, time_conditioning: bool = False, inv_freq: bool = True) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    state = {f"backbone.{k}": v.contiguous() for k, v in sd.items()}
    if inv_freq:
        hd = cfg["hidden"] // cfg["heads"]
        state["backbone.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    save_file(state, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps(hf_config_json(cfg, time_conditioning)))


def our_config(cfg: dict, time_conditioning: bool = False) -> DiTConfig:
    return DiTConfig(vocab_size=cfg["vocab"], hidden_size=cfg["hidden"], n_blocks=cfg["blocks"], n_heads=cfg["heads"],
                     cond_dim=cfg["cond"], length=cfg["length"], dropout=0.1, time_conditioning=time_conditioning)


def write_lightning_ckpt(path, raw: dict, ema: dict, cfg: dict, inv_freq: bool = True, extra_ema: int = 0) -> None:
    """The layout of mdlm's Lightning checkpoints: `state_dict` (raw weights under `backbone.`, plus other
    modules' keys), `ema` = ExponentialMovingAverage.state_dict() with the shadow list in parameters() order."""
    state = {f"backbone.{k}": v for k, v in raw.items()}
    if inv_freq:
        hd = cfg["hidden"] // cfg["heads"]
        state["backbone.rotary_emb.inv_freq"] = 1.0 / 10000 ** (torch.arange(0, hd, 2).float() / hd)
    state["train_metrics.nll.mean_value"] = torch.tensor(0.0, dtype=torch.float64)  # non-backbone modules
    shadow = [ema[n].clone() for n in ref_param_names(cfg["blocks"])] + [torch.zeros(1)] * extra_ema
    torch.save({"epoch": 3, "global_step": 1000, "pytorch-lightning_version": "2.2.1", "state_dict": state,
                "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
                "optimizer_states": [{"state": {}, "param_groups": [{"lr": 3e-4}]}], "lr_schedulers": [{}],
                "ema": {"decay": 0.9999, "num_updates": 1000, "shadow_params": shadow}}, path)


def model_logits(model: MDLM, ids: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(ids, sigma).double()


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, SMALL["vocab"], (3, SMALL["length"]), generator=g)
    sigma = torch.tensor([0.05, 1.3, 6.9])
    return ids, sigma


# ------------------------------------------------------------------------------------------------------------
# parity


@pytest.mark.parametrize("time_conditioning", [False, True])
@pytest.mark.parametrize("inv_freq", [True, False])
def test_hf_folder_matches_reference_forward(tmp_path, inputs, time_conditioning, inv_freq):
    sd = random_state(SMALL, seed=0)
    write_hf_folder(tmp_path / "owt", sd, SMALL, time_conditioning, inv_freq=inv_freq)
    model = load_model(tmp_path / "owt")
    assert model.config == our_config(SMALL, time_conditioning)
    ids, sigma = inputs
    ref = reference_logits(sd, {**SMALL, "time_conditioning": time_conditioning}, ids, sigma)
    got = model_logits(model, ids, sigma)
    assert ref.abs().max() > 1.0  # the check is not vacuous: logits of order one and more
    assert (got - ref).abs().max().item() <= 1e-5
    if not time_conditioning:  # time-agnostic: sigma is ignored
        assert torch.equal(model_logits(model, ids, sigma * 0 + 3.0), model_logits(model, ids, sigma))


@pytest.mark.parametrize("inv_freq", [True, False])
def test_lightning_ckpt_loads_ema_weights(tmp_path, inputs, inv_freq):
    raw, ema = random_state(SMALL, seed=0), random_state(SMALL, seed=1)
    path = tmp_path / "mdlm.ckpt"
    write_lightning_ckpt(path, raw, ema, SMALL, inv_freq=inv_freq)
    ids, sigma = inputs
    cfg = {**SMALL, "time_conditioning": False}
    got_ema = model_logits(load_lightning_ckpt(path, our_config(SMALL)), ids, sigma)
    got_raw = model_logits(load_lightning_ckpt(path, our_config(SMALL), use_ema=False), ids, sigma)
    assert (got_ema - reference_logits(ema, cfg, ids, sigma)).abs().max().item() <= 1e-5
    assert (got_raw - reference_logits(raw, cfg, ids, sigma)).abs().max().item() <= 1e-5
    assert (got_ema - got_raw).abs().max() > 0.1


def test_lightning_ckpt_ignores_trailing_noise_parameters(tmp_path, inputs):
    raw = random_state(SMALL, seed=0)
    write_lightning_ckpt(tmp_path / "m.ckpt", raw, raw, SMALL, extra_ema=2)
    ids, sigma = inputs
    got = model_logits(load_lightning_ckpt(tmp_path / "m.ckpt", our_config(SMALL)), ids, sigma)
    assert (got - reference_logits(raw, {**SMALL, "time_conditioning": False}, ids, sigma)).abs().max() <= 1e-5


def test_parameter_order_is_the_reference_order():
    names = [n for n, _ in MDLM(our_config(SMALL)).backbone.named_parameters()]
    assert names == ref_param_names(SMALL["blocks"])


def random_small_model() -> MDLM:
    """The SMALL DiT with non-trivial random weights (adaLN-zero init would predict uniform logits)."""
    torch.manual_seed(0)
    model = MDLM(our_config(SMALL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    return model


def test_select_gives_the_selected_rows_of_the_full_logits(inputs):
    model = random_small_model()
    with torch.no_grad():
        ids, _ = inputs
        select = torch.rand(ids.shape, generator=torch.Generator().manual_seed(0)) < 0.4
        full, part = model(ids), model(ids, select=select)
    assert part.shape == (int(select.sum()), SMALL["vocab"])
    assert torch.allclose(part, full[select], atol=1e-6, rtol=0)


def test_select_by_rows_and_positions(inputs):
    """(rows, pos) index pairs: any order, repeats allowed, the same logits as the full forward's entries."""
    model = random_small_model()
    with torch.no_grad():
        ids, _ = inputs
        rows, pos = torch.tensor([2, 0, 2, 1, 0]), torch.tensor([5, 0, 5, 15, 7])
        full, part = model(ids), model(ids, select=(rows, pos))
        one = model(ids, select=(torch.tensor([1]), torch.tensor([3])))
    assert part.shape == (5, SMALL["vocab"]) and one.shape == (1, SMALL["vocab"])
    assert torch.allclose(part, full[rows, pos], atol=1e-6, rtol=0)
    assert torch.equal(part[0], part[2])  # a repeated position gives the same row
    assert torch.allclose(one[0], full[1, 3], atol=1e-5, rtol=0)  # one row: a GEMV, other rounding
    with pytest.raises(ValueError, match="rows and pos must be 1-d of equal length"):
        model(ids, select=(rows, pos[:3]))
    with pytest.raises(ValueError, match="expected a bool mask"):
        model(ids, select=torch.zeros(3, SMALL["length"], dtype=torch.long))


def test_dropout_only_in_training_mode(inputs):
    torch.manual_seed(0)
    model = MDLM(our_config(SMALL))  # dropout 0.1
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ids, _ = inputs
    with torch.no_grad():
        a, b = model.eval()(ids), model.eval()(ids)
        c = model.train()(ids)
    assert torch.equal(a, b) and not torch.allclose(a, c)


def test_runs_inside_a_callers_bf16_autocast(inputs):
    """train/eval code may wrap the model in autocast; a model with autocast=False must not switch it off
    for the blocks only (regression: bf16 conditioning met fp32 adaLN weights -> dtype error)."""
    torch.manual_seed(0)
    model = MDLM(our_config(SMALL)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.1)
    ids, _ = inputs
    with torch.no_grad():
        ref = model(ids).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outer = model(ids).float()
        model.backbone.autocast = True
        inner = model(ids).float()
    scale = ref.abs().max()
    assert (outer - ref).abs().max() < 0.05 * scale and (inner - ref).abs().max() < 0.05 * scale


# ------------------------------------------------------------------------------------------------------------
# sizes and layout


def test_owt_size_is_mdlm_owt():
    with torch.device("meta"):
        heavy, light = MDLM(size_config("small")), MDLM(size_config("small", light=True))
    assert heavy.backbone.num_parameters() == 169_627_218  # 169.6M: mdlm-owt (the reference "small" size)
    assert light.backbone.num_parameters() == 108_205_650  # 108.2M
    assert heavy.backbone.num_parameters(non_embedding=True) == 169_627_218 - 50258 * 768
    expected = {f"backbone.{k}": v for k, v in ref_shapes(50258, 768, 128, 12, 12).items()}
    assert expected["backbone.rotary_emb.inv_freq"] == (32,)
    got = {k: tuple(v.shape) for k, v in heavy.state_dict().items()}
    assert got == expected
    got_light = {k: tuple(v.shape) for k, v in light.state_dict().items()}
    assert got_light == {k: v for k, v in expected.items() if not any(f"blocks.{i}." in k for i in range(4, 12))}


def expected_params(V: int, d: int, cond: int, n_blocks: int) -> int:
    """Closed form of the mdlm-owt layout: embedding + head, conditioning MLP, final adaLN and norm, blocks."""
    block = 12 * d * d + 4 * d + d + 2 * d + 6 * d * cond + 6 * d  # qkv/out/mlp weights, mlp biases, norms, adaLN
    rest = 2 * V * d + V + (256 * cond + cond + cond * cond + cond) + d + 2 * d * cond + 2 * d
    return rest + n_blocks * block


def test_profile_configs():
    from pathlib import Path

    from mdlm.profiles import load_profile

    assert expected_params(50258, 768, 128, 12) == 169_627_218
    for name, vocab in (("smoke", 8192), ("tiny", 8192), ("owt", 50258)):
        profile = load_profile(name, Path(__file__).parents[1] / "params.yaml")
        m = profile.model
        for which in ("heavy", "light"):
            cfg = model_config(m, which, vocab, profile.data.seq_len)
            assert (cfg.hidden_size, cfg.n_heads, cfg.cond_dim, cfg.n_blocks, cfg.length) == (
                m.hidden, m.heads, m.cond_dim, m.blocks(which), profile.data.seq_len)
            with torch.device("meta"):
                n = MDLM(cfg).backbone.num_parameters()
            assert n == expected_params(vocab, m.hidden, m.cond_dim, m.blocks(which))
