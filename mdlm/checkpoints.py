"""Checkpoints: our folder format, the two mdlm-owt formats, and the shipped, hash-pinned pair.

Our format (a folder): `model.safetensors` (mdlm-owt layout, keys under `backbone.`), `config.json`
(DiTConfig fields + `tokenizer`), and for training runs `train_state.pt` (optimizer, EMA, step, RNG;
read with weights_only=True). Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdlm.errors import UserError
from mdlm.io import atomic_path, atomic_write_json
from mdlm.model import MDLM, DiTConfig

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
MANIFEST = "manifest.json"
OPTIONAL_KEYS = {"backbone.rotary_emb.inv_freq"}  # a buffer that some exports omit


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ------------------------------------------------------------------------------------------------------------
# state-dict checks


def load_state_dict_checked(model: MDLM, state: dict[str, torch.Tensor], source: str) -> None:
    """Load `state` strictly; one UserError lists every missing, unexpected or mis-shaped key."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state) - OPTIONAL_KEYS)
    unexpected = sorted(set(state) - set(expected))
    mis_shaped = sorted(
        f"{k} {tuple(state[k].shape)} != {tuple(expected[k].shape)}"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    problems = []
    if missing:
        problems.append(f"missing keys {_short(missing)}")
    if unexpected:
        problems.append(f"unexpected keys {_short(unexpected)}")
    if mis_shaped:
        problems.append(f"shape mismatch {_short(mis_shaped)}")
    if problems:
        raise UserError(f"{source}: checkpoint does not fit the model: " + "; ".join(problems))
    for key in OPTIONAL_KEYS - set(state):
        state = dict(state, **{key: expected[key]})
    model.load_state_dict({k: v.to(expected[k].dtype) for k, v in state.items()}, strict=True)


def _short(items: list[str], limit: int = 6) -> str:
    more = f" (+{len(items) - limit} more)" if len(items) > limit else ""
    return "[" + ", ".join(items[:limit]) + "]" + more


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: not found")
    with open(path, "rb") as f:
        head = f.read(2)
    if head[:1] == b"\x80" or zipfile.is_zipfile(path):
        raise UserError(f"{path}: is a pickle/zip file, expected safetensors")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a valid safetensors file ({exc})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}: malformed JSON ({exc})") from None


# ------------------------------------------------------------------------------------------------------------
# our format


def save_model(model: MDLM, folder: str | Path, extra_config: dict[str, Any] | None = None,
               dtype: torch.dtype | None = None) -> None:
    """Write weights (optionally cast, e.g. bf16 for shipping) and config atomically into `folder`."""
    folder = Path(folder)
    state = {k: v.detach().to(dtype or v.dtype).contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_path(folder / WEIGHTS) as tmp:
        save_file(state, str(tmp))
    atomic_write_json(folder / CONFIG, {**model.config.to_dict(), **(extra_config or {})})


def read_config(folder: str | Path) -> tuple[DiTConfig, dict[str, Any]]:
    raw = _read_json(Path(folder) / CONFIG)
    return DiTConfig.from_dict(raw), raw


def load_model(folder: str | Path, device: str | torch.device = "cpu", autocast: bool = False) -> MDLM:
    """Load a model folder: ours, or an mdlm-owt Hugging Face export (config.json + model.safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: checkpoint folder not found")
    raw = _read_json(folder / CONFIG)
    cfg = hf_config(raw) if raw.get("model_type") == "mdlm" else DiTConfig.from_dict(raw)
    model = MDLM(cfg, autocast=autocast)
    load_state_dict_checked(model, _read_safetensors(folder / WEIGHTS), str(folder / WEIGHTS))
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------------------
# mdlm-owt formats


def hf_config(raw: dict[str, Any]) -> DiTConfig:
    """Map the mdlm-owt `config.json` (MDLMConfig) fields; never trust class defaults (cond_dim!)."""
    try:
        return DiTConfig(
            vocab_size=raw["vocab_size"], hidden_size=raw["hidden_dim"], n_blocks=raw["n_blocks"],
            n_heads=raw["n_heads"], cond_dim=raw["cond_dim"], length=raw["model_length"],
            dropout=raw.get("dropout", 0.1), time_conditioning=raw.get("time_conditioning", False),
        )
    except KeyError as exc:
        raise UserError(f"config.json: mdlm-owt config lacks field {exc.args[0]!r}") from None


def load_lightning_ckpt(path: str | Path, cfg: DiTConfig, use_ema: bool = True) -> MDLM:
    """Load a Lightning `.ckpt` of the reference (EMA shadow weights by default), weights_only=True."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except Exception as exc:  # truncated zip, pickle with disallowed globals, ...
        raise UserError(f"{path}: cannot be read as a weights-only checkpoint ({type(exc).__name__})") from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt:
        raise UserError(f"{path}: no 'state_dict' in the checkpoint")
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    model = MDLM(cfg)
    load_state_dict_checked(model, state, str(path))
    if use_ema and ckpt.get("ema") is not None:
        shadow = ckpt["ema"].get("shadow_params") if isinstance(ckpt["ema"], dict) else ckpt["ema"]
        params = list(model.backbone.parameters())
        if shadow is None or len(shadow) < len(params):
            raise UserError(f"{path}: EMA holds {len(shadow or [])} tensors, expected >= {len(params)}")
        with torch.no_grad():
            for p, s in zip(params, shadow, strict=False):  # trailing entries: noise parameters
                if p.shape != s.shape:
                    raise UserError(f"{path}: EMA tensor shape {tuple(s.shape)} != {tuple(p.shape)}")
                p.copy_(s)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# shipped pair: hashes pinned in checkpoints/<profile>/manifest.json


def verify_shipped(folder: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; refuse any mismatch."""
    folder = Path(folder)
    manifest = _read_json(folder / MANIFEST)
    for rel, expected in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{path}: listed in {folder / MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(f"{path}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...)")
    return manifest


def profile_model_dirs(profile: dict[str, Any]) -> dict[str, Path]:
    """Where the heavy and light models of a profile come from (`checkpoints.source`)."""
    from mdlm.profiles import model_dir, project_root

    ck = profile["checkpoints"]
    source = ck.get("source", "train")
    if source == "shipped":
        root = project_root() / ck["dir"]
        return {"heavy": root / "heavy", "light": root / "light"}
    if source == "train":
        dirs = {w: model_dir(profile, w) for w in ("heavy", "light")}
        if ck.get("heavy_hf"):
            dirs["heavy"] = project_root() / ck["heavy_hf"]
        return dirs
    raise UserError(f"params.yaml: profiles.{profile['name']}.checkpoints.source must be 'shipped' or 'train', "
                    f"got {source!r}")


def load_profile_models(profile: dict[str, Any], device: str | torch.device = "cpu",
                        autocast: bool = False) -> dict[str, MDLM]:
    """{"heavy": MDLM, "light": MDLM} in eval mode, hash-verified when shipped."""
    dirs = profile_model_dirs(profile)
    if profile["checkpoints"].get("source") == "shipped":
        verify_shipped(dirs["heavy"].parent)
    models = {}
    for which, folder in dirs.items():
        if not (Path(folder) / WEIGHTS).is_file():
            hint = "run `mdlm train`" if profile["checkpoints"].get("source") == "train" else "check the folder"
            raise UserError(f"{folder}: no {WEIGHTS} for the {which} model of profile {profile['name']} ({hint})")
        models[which] = load_model(folder, device=device, autocast=autocast)  # params stay fp32
    return models
