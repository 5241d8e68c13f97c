"""Checkpoints: our folder format, the two mdlm-owt formats, and the shipped, hash-pinned pair.

Our format (a folder): `model.safetensors` (mdlm-owt layout, keys under `backbone.`), `config.json`
(DiTConfig fields + `tokenizer`), and for training runs `train_state.pt` (optimizer, EMA, step, RNG;
read with weights_only=True). Nothing here unpickles arbitrary objects.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from mdlm.config import CheckpointSettings
from mdlm.errors import UserError
from mdlm.io import atomic_path, atomic_write_json, read_json, sha256_file
from mdlm.model import MDLM, DiTConfig
from mdlm.paths import model_dir, project_root

WEIGHTS = "model.safetensors"
CONFIG = "config.json"
TRAIN_STATE = "train_state.pt"
MANIFEST = "manifest.json"
OPTIONAL_KEYS = {"backbone.rotary_emb.inv_freq"}  # a buffer that some exports omit


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


# fields our config.json must state: a silent class default (time_conditioning!) would change the model
REQUIRED_FIELDS = ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim", "length", "time_conditioning")


def config_from_json(raw: dict[str, Any], source: str) -> DiTConfig:
    """Our config.json or an mdlm-owt one (`model_type: mdlm`) -> a checked DiTConfig."""
    if not isinstance(raw, dict):
        raise UserError(f"{source}: expected a JSON object")
    if raw.get("model_type") == "mdlm":
        cfg = hf_config(raw, source)
    else:
        missing = [k for k in REQUIRED_FIELDS if k not in raw]
        if missing:
            raise UserError(f"{source}: missing field(s) {', '.join(missing)}")
        cfg = DiTConfig.from_dict(raw)
    ints = {k: getattr(cfg, k) for k in ("vocab_size", "hidden_size", "n_blocks", "n_heads", "cond_dim", "length",
                                          "mlp_ratio")}
    bad = [f"{k}={v!r}" for k, v in ints.items() if not isinstance(v, int) or isinstance(v, bool) or v < 1]
    if bad:
        raise UserError(f"{source}: expected positive integers, got {', '.join(bad)}")
    if cfg.hidden_size % cfg.n_heads or cfg.head_dim % 2:
        raise UserError(f"{source}: hidden size {cfg.hidden_size} must split into {cfg.n_heads} heads of even size")
    return cfg


def read_config(folder: str | Path) -> tuple[DiTConfig, dict[str, Any]]:
    path = Path(folder) / CONFIG
    raw = read_json(path)
    return config_from_json(raw, str(path)), raw


def load_model(folder: str | Path, device: str | torch.device = "cpu", autocast: bool = False) -> MDLM:
    """Load a model folder: ours, or an mdlm-owt Hugging Face export (config.json + model.safetensors)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{folder}: checkpoint folder not found")
    cfg, _ = read_config(folder)
    model = MDLM(cfg, autocast=autocast)
    load_state_dict_checked(model, _read_safetensors(folder / WEIGHTS), str(folder / WEIGHTS))
    return model.to(device).eval()


# ------------------------------------------------------------------------------------------------------------
# mdlm-owt formats


HF_FIELDS = ("vocab_size", "hidden_dim", "n_blocks", "n_heads", "cond_dim", "model_length")


def hf_config(raw: dict[str, Any], source: str = CONFIG) -> DiTConfig:
    """Map the mdlm-owt `config.json` (MDLMConfig) fields; never trust class defaults (cond_dim!)."""
    missing = [k for k in HF_FIELDS if k not in raw]
    if missing:
        raise UserError(f"{source}: mdlm-owt config lacks field(s) {', '.join(missing)}")
    return DiTConfig(
        vocab_size=raw["vocab_size"], hidden_size=raw["hidden_dim"], n_blocks=raw["n_blocks"],
        n_heads=raw["n_heads"], cond_dim=raw["cond_dim"], length=raw["model_length"],
        dropout=raw.get("dropout", 0.1), time_conditioning=raw.get("time_conditioning", False),  # MDLMConfig default
    )


class _Foreign:
    """Inert stand-in for a class a Lightning checkpoint pickles besides tensors (OmegaConf config, tokenizer
    in `hyper_parameters`, ...): it records its arguments and state and runs none of the original code."""

    def __new__(cls, *args, **kwargs):
        obj = super().__new__(cls)
        obj.args = args
        return obj

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.state = state


def _load_weights_only(path: Path) -> Any:
    """torch.load(weights_only=True), with every non-allowlisted global replaced by `_Foreign`.

    The reference's `mdlm.ckpt` stores its Hydra config and GPT-2 tokenizer objects next to the weights, which
    plain weights_only loading refuses; stubbing them keeps the load free of arbitrary code."""
    try:
        foreign = [] if not zipfile.is_zipfile(path) else torch.serialization.get_unsafe_globals_in_checkpoint(path)
        with torch.serialization.safe_globals([(_Foreign, name) for name in foreign]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise UserError(f"{path}: not found") from None
    except Exception as exc:  # truncated zip, a global in a blocked module, ...
        raise UserError(f"{path}: cannot be read as a weights-only checkpoint ({type(exc).__name__}: "
                        f"{str(exc).splitlines()[0][:200] if str(exc) else ''})") from None


def load_lightning_ckpt(path: str | Path, cfg: DiTConfig, use_ema: bool = True) -> MDLM:
    """Load a Lightning `.ckpt` of the reference (EMA shadow weights by default), weights_only=True."""
    path = Path(path)
    ckpt = _load_weights_only(path)
    if not isinstance(ckpt, dict) or not isinstance(ckpt.get("state_dict"), dict):
        raise UserError(f"{path}: no 'state_dict' in the checkpoint")
    state = {k: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    model = MDLM(cfg)
    load_state_dict_checked(model, state, str(path))
    if use_ema and ckpt.get("ema") is not None:
        # mdlm's ExponentialMovingAverage.state_dict(): {decay, num_updates, shadow_params}, the shadow list in
        # backbone.parameters() order followed by the noise schedule's parameters (none for log-linear)
        shadow = ckpt["ema"].get("shadow_params") if isinstance(ckpt["ema"], dict) else ckpt["ema"]
        params = dict(model.backbone.named_parameters())
        if not isinstance(shadow, (list, tuple)) or len(shadow) < len(params):
            n = len(shadow) if isinstance(shadow, (list, tuple)) else 0
            raise UserError(f"{path}: EMA holds {n} tensors, expected >= {len(params)} (backbone parameters)")
        bad = [f"#{i} {name} {tuple(getattr(s, 'shape', ()))} != {tuple(p.shape)}"
               for i, ((name, p), s) in enumerate(zip(params.items(), shadow[:len(params)], strict=True))
               if not isinstance(s, torch.Tensor) or s.shape != p.shape]
        if bad:
            raise UserError(f"{path}: EMA shadow parameters do not fit the model: {_short(bad)}")
        with torch.no_grad():
            for p, s in zip(model.backbone.parameters(), shadow, strict=False):  # trailing: noise parameters
                p.copy_(s)
    return model.eval()


# ------------------------------------------------------------------------------------------------------------
# shipped pair: hashes pinned in checkpoints/<profile>/manifest.json


def verify_shipped(folder: str | Path) -> dict[str, Any]:
    """Check every file listed in the manifest against its sha256; refuse any mismatch."""
    folder = Path(folder)
    manifest = read_json(folder / MANIFEST)
    for rel, expected in manifest.get("files", {}).items():
        path = folder / rel
        if not path.is_file():
            raise UserError(f"{path}: listed in {folder / MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise UserError(f"{path}: sha256 {actual[:12]}... does not match the manifest ({expected[:12]}...)")
    return manifest


def shipped_dir(ck: CheckpointSettings) -> Path:
    """The shipped pair's folder of a `checkpoints:` section (relative paths: from the project root)."""
    if not ck.dir:
        raise UserError("checkpoints.dir is not set: the profile ships no checkpoints")
    return project_root() / ck.dir


def install_shipped(ck: CheckpointSettings, which: str, out: str | Path) -> Path:
    """Verify the shipped `which` model and copy it to `out` (what `mdlm train` does when
    `checkpoints.source` is `shipped`): downstream stages then read one place whatever the source."""
    src = shipped_dir(ck)
    manifest = verify_shipped(src)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for name in (WEIGHTS, CONFIG):
        with atomic_path(out / name) as tmp:
            tmp.write_bytes((src / which / name).read_bytes())
    entry = manifest.get("models", {}).get(which, {})
    atomic_write_json(out / "shipped.json", {"source": str(src.relative_to(src.parents[1])), **entry})
    return out


def pair_dirs(profile_name: str, ck: CheckpointSettings) -> dict[str, Path]:
    """Where the heavy and light models of profile ``profile_name`` are read from.

    `mdlm train` writes (or, for `checkpoints.source: shipped`, installs) them under runs/<profile>/models;
    a shipped pair is read straight from its folder when it has not been installed yet. `heavy_hf` points the
    heavy model at an mdlm-owt Hugging Face export instead.
    """
    dirs = {w: model_dir(profile_name, w) for w in ("heavy", "light")}
    if ck.source == "shipped":
        dirs = {w: d if (d / WEIGHTS).is_file() else shipped_dir(ck) / w for w, d in dirs.items()}
    if ck.heavy_hf:
        dirs["heavy"] = project_root() / ck.heavy_hf
    return dirs


def load_pair(profile_name: str, ck: CheckpointSettings, device: str | torch.device = "cpu",
              autocast: bool = False) -> dict[str, MDLM]:
    """{"heavy": MDLM, "light": MDLM} in eval mode (fp32 parameters); a shipped pair is hash-verified."""
    if ck.source == "shipped":
        verify_shipped(shipped_dir(ck))
    models = {}
    for which, folder in pair_dirs(profile_name, ck).items():
        if not (Path(folder) / WEIGHTS).is_file():
            raise UserError(f"{folder}: no {WEIGHTS} for the {which} model of profile {profile_name} "
                            f"(run `mdlm train --profile {profile_name} --model {which}`)")
        models[which] = load_model(folder, device=device, autocast=autocast)
    return models
