"""Profiles: one block of `params.yaml` per scale (smoke, tiny, owt, lm1b), selected by the `profile` key.

`load_profile` reads the file, selects a block, applies command-line overrides and validates the result once
into a frozen `mdlm.config.Profile`; any problem is one line naming the file, the key path and what was
expected. Only command modules call it: library code takes the typed sections it needs.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from mdlm.config import Profile
from mdlm.errors import UserError
from mdlm.paths import project_root

PARAMS_FILE = "params.yaml"

Overrides = Mapping[str, Mapping[str, Any]]  # section -> {key: value}; None values mean "not given"


def params_path(path: str | os.PathLike | None = None) -> Path:
    """The params file: ``path``, else params.yaml of the project root (shown relative to it in errors)."""
    if path is not None:
        return Path(path)
    root = project_root()
    return root / PARAMS_FILE if root != Path.cwd().resolve() else Path(PARAMS_FILE)


def load_params(path: str | os.PathLike | None = None) -> dict[str, Any]:
    path = params_path(path)
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


def load_profile(name: str | None = None, params_file: str | os.PathLike | None = None,
                 overrides: Overrides | None = None) -> Profile:
    """The validated profile ``name`` (default: the file's `profile` key), with ``overrides`` applied.

    ``overrides`` are command-line values, e.g. ``{"sample": {"steps": args.steps}}``; a None value leaves the
    profile's setting. Overridden values are validated like the file's and named as such in errors.
    """
    file = params_path(params_file)
    params = load_params(file)
    name = name or params.get("profile")
    profiles = params["profiles"]
    if not isinstance(name, str) or name not in profiles:
        known = ", ".join(sorted(str(k) for k in profiles))
        raise UserError(f"{file}: profile: unknown profile {name!r} (known: {known})")
    block = profiles[name]
    if not isinstance(block, dict):
        raise UserError(f"{file}: profiles.{name}: expected a mapping, got {type(block).__name__}")
    block = {**block, "name": name}
    given = _apply_overrides(block, overrides or {})
    try:
        return Profile.model_validate(block)
    except ValidationError as exc:
        raise UserError(_one_line(exc, file, name, given)) from None


def _apply_overrides(block: dict[str, Any], overrides: Overrides) -> set[tuple[str, str]]:
    given = set()
    for section, values in overrides.items():
        values = {k: v for k, v in values.items() if v is not None}
        if values:
            current = block.get(section)
            block[section] = {**(current if isinstance(current, dict) else {}), **values}
            given |= {(section, k) for k in values}
    return given


def _one_line(exc: ValidationError, file: Path, name: str, given: set[tuple[str, str]]) -> str:
    err = exc.errors()[0]
    loc = [str(p) for p in err["loc"] if not str(p).startswith(("function-after", "str", "dict", "float"))]
    key = ".".join(["profiles", name, *loc])
    source = " (command-line override)" if tuple(loc[:2]) in given else ""
    if err["type"] == "missing":
        return f"{file}: {key}: required key missing"
    if err["type"] == "extra_forbidden":
        return f"{file}: {key}: unknown key"
    message = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    got = "" if isinstance(value, dict | list) else f" (got {value!r})"
    return f"{file}: {key}{source}: {message}{got}"


def add_profile_argument(parser) -> None:
    """The `--profile` option every command takes."""
    parser.add_argument("--profile", help="profile of params.yaml (default: the file's `profile` key)")
