"""Where things live, relative to the project root: every stage agrees on these paths."""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The folder holding params.yaml: $MDLM_ROOT if set, else the current directory."""
    return Path(os.environ.get("MDLM_ROOT", ".")).resolve()


def data_dir() -> Path:
    return project_root() / "data"


def assets_dir() -> Path:
    return data_dir() / "assets"


def tokenizer_dir(tokenizer: str) -> Path:
    return data_dir() / "tokenizers" / tokenizer


def prepared_dir(profile_name: str) -> Path:
    return data_dir() / "prepared" / profile_name


def run_dir(profile_name: str) -> Path:
    return project_root() / "runs" / profile_name


def model_dir(profile_name: str, which: str) -> Path:
    """Where `mdlm train` writes (and the other stages read, when checkpoints.source is `train`)."""
    return run_dir(profile_name) / "models" / which
