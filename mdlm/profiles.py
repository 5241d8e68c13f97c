"""Profiles: one block of `params.yaml` per scale (smoke, tiny, owt, lm1b), selected by the `profile` key.

Every stage reads its settings from the selected profile; a new profile is a new block, not new code.
Paths derived from the profile live here too, so that every stage agrees on where things are.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from mdlm.errors import UserError

PARAMS_FILE = "params.yaml"
SECTIONS = ("tokenizer", "data", "model", "checkpoints", "train", "sample", "evaluate")


def project_root() -> Path:
    """The folder holding params.yaml: $MDLM_ROOT if set, else the current directory."""
    return Path(os.environ.get("MDLM_ROOT", ".")).resolve()


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = Path(path) if path is not None else project_root() / PARAMS_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: not found (run from the project root or set MDLM_ROOT)") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(params, dict) or not isinstance(params.get("profiles"), dict):
        raise UserError(f"{path}: expected a mapping with a 'profiles' mapping")
    return params


def load_profile(name: str | None = None, params_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Return the settings of profile ``name`` (default: the file's `profile` key) with ``name`` filled in."""
    params = load_params(params_path)
    name = name or params.get("profile")
    profiles = params["profiles"]
    if name not in profiles:
        raise UserError(f"{PARAMS_FILE}: unknown profile {name!r} (known: {', '.join(sorted(profiles))})")
    profile = dict(profiles[name])
    missing = [s for s in SECTIONS if s not in profile]
    if missing:
        raise UserError(f"{PARAMS_FILE}: profile {name!r} lacks section(s) {', '.join(missing)}")
    profile["name"] = name
    return profile


# ---- paths every stage agrees on (relative to the project root) ----------------------------------------

def data_dir() -> Path:
    return project_root() / "data"


def assets_dir() -> Path:
    return data_dir() / "assets"


def tokenizer_dir(tokenizer: str) -> Path:
    return data_dir() / "tokenizers" / tokenizer


def prepared_dir(profile: dict[str, Any]) -> Path:
    return data_dir() / "prepared" / profile["name"]


def run_dir(profile: dict[str, Any]) -> Path:
    return project_root() / "runs" / profile["name"]


def model_dir(profile: dict[str, Any], which: str) -> Path:
    """Where `mdlm train` writes (and the other stages read, when checkpoints.source is `train`)."""
    return run_dir(profile) / "models" / which
