"""Model schedules: which model (heavy, light, ...) runs at each of the T denoising steps.

A schedule file (spec: `schedules/README.md`) is written in the paper's notation, either as contiguous
segments (``[L125, H750, L125]`` or, scaling to any T, ``[L12.5%, H75%, L12.5%]``) or as a repeated
``pattern`` (``[H, H, H, L]``). Step 0 is the first sampling step (t = 1, all positions masked); the last
step ends near clean text. ``load_schedule(path, steps)`` resolves a file for one step count T into a
``Schedule`` whose segments are absolute and sum to T.

Percentages are resolved by rounding the cumulative boundaries, not the lengths:
``boundary_k = floor(T * (p_1 + ... + p_k) / 100 + 1/2)`` (round half up, exact decimal arithmetic), so
the lengths always sum to T and a segment differs from its exact share by less than one step. A segment
that rounds to zero steps is an error (use a larger T or fewer segments), never silently dropped.
"""

from __future__ import annotations

import bisect
import hashlib
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from pathlib import Path
from typing import Any

import yaml

from mdlm.errors import UserError, first_line
from mdlm.io import atomic_write_text

DEFAULT_MODELS: dict[str, str] = {"H": "heavy", "L": "light"}
ALLOWED_KEYS = ("name", "description", "models", "segments", "pattern")
SCHEDULES_DIR = "schedules"

_ALIAS_RE = re.compile(r"[A-Za-z]+")
# alias letters, then a (possibly signed/decimal) count, then an optional percent sign
_SEGMENT_RE = re.compile(r"([A-Za-z]+)\s*([-+]?\d+(?:\.\d+)?)?\s*(%?)")


@dataclass
class Schedule:
    """A schedule resolved for ``steps`` denoising steps: contiguous (alias, count) segments summing to T."""

    name: str
    steps: int
    segments: tuple[tuple[str, int], ...]
    models: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MODELS))
    description: str = ""
    source: str | None = None          # the file it was loaded from, if any
    source_sha256: str | None = None   # sha256 of that file's bytes

    def __post_init__(self) -> None:
        self.segments = tuple((str(a), int(n)) for a, n in self.segments)
        self._ends = []  # exclusive end step of each segment
        total = 0
        for _, count in self.segments:
            total += count
            self._ends.append(total)

    # ---- construction --------------------------------------------------------------------------------

    @classmethod
    def from_segments(
        cls,
        name: str,
        segments: Sequence[str | tuple[str, int]],
        steps: int,
        models: Mapping[str, str] | None = None,
        description: str = "",
        known_models: Iterable[str] | None = None,
    ) -> Schedule:
        """Build and validate a schedule in code, e.g. ``from_segments("s", ["L125", "H750", "L125"], 1000)``.

        ``segments`` holds notation strings (absolute or percentages, as in a file) or (alias, count) pairs.
        """
        items = [s if isinstance(s, str) else f"{s[0]}{s[1]}" for s in segments]
        spec: dict[str, Any] = {"name": name, "segments": items}
        if models is not None:
            spec["models"] = dict(models)
        if description:
            spec["description"] = description
        return parse_schedule(spec, steps, where=f"schedule {name!r}", known_models=known_models)

    # ---- queries -------------------------------------------------------------------------------------

    def model_at(self, step: int) -> str:
        """Alias of the model that runs step ``step`` (0 = first step, t = 1)."""
        if not 0 <= step < self.steps:
            raise IndexError(f"step {step} outside [0, {self.steps})")
        return self.segments[bisect.bisect_right(self._ends, step)][0]

    def model_name_at(self, step: int) -> str:
        return self.models[self.model_at(step)]

    def step_aliases(self) -> list[str]:
        """The alias of every step, in sampling order (length T)."""
        return [alias for alias, count in self.segments for _ in range(count)]

    def segment_bounds(self) -> list[tuple[str, int, int]]:
        """(alias, first step, end step exclusive) of every segment."""
        starts = [0, *self._ends[:-1]]
        return [(a, s, e) for (a, _), s, e in zip(self.segments, starts, self._ends, strict=True)]

    @property
    def counts(self) -> dict[str, int]:
        """Steps per alias (aliases declared in ``models`` but unused count 0)."""
        out = dict.fromkeys(self.models, 0)
        for alias, count in self.segments:
            out[alias] += count
        return out

    @property
    def model_steps(self) -> dict[str, int]:
        """Steps per model name (several aliases may name the same model)."""
        out = dict.fromkeys(self.models.values(), 0)
        for alias, count in self.counts.items():
            out[self.models[alias]] += count
        return out

    def fraction(self, model: str) -> float:
        """Fraction of the T steps run by model name ``model``."""
        return self.model_steps.get(model, 0) / self.steps

    @property
    def light_fraction(self) -> float:
        return self.fraction("light")

    @property
    def notation(self) -> str:
        """The paper's notation, e.g. ``L125,H750,L125``."""
        return ",".join(f"{a}{n}" for a, n in self.segments)

    def to_dict(self) -> dict[str, Any]:
        """The file form with absolute segments (exact for this T)."""
        out: dict[str, Any] = {"name": self.name}
        if self.description:
            out["description"] = self.description
        if self.models != DEFAULT_MODELS:
            out["models"] = dict(self.models)
        out["segments"] = [f"{a}{n}" for a, n in self.segments]
        return out


# ---- loading and validation ----------------------------------------------------------------------------


def resolve_schedule_path(arg: str | os.PathLike) -> Path:
    """A schedule argument is a file path, or the name of a shipped schedule (``sandwich``)."""
    path = Path(arg)
    if path.is_file():
        return path
    from mdlm.paths import project_root

    shipped = project_root() / SCHEDULES_DIR / f"{arg}.yaml"
    if shipped.is_file():
        return shipped
    raise UserError(f"{arg}: schedule file not found (and no {SCHEDULES_DIR}/{arg}.yaml)")


def load_schedule(
    path: str | os.PathLike, steps: int, known_models: Iterable[str] | None = None
) -> Schedule:
    """Read, validate and resolve a schedule file for ``steps`` denoising steps.

    ``known_models``: if given, every model name the schedule refers to must be one of them.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: schedule file not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read schedule file ({exc.strerror})") from None
    try:
        spec = yaml.safe_load(raw.decode("utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: malformed YAML: {first_line(exc)}") from None
    schedule = parse_schedule(spec, steps, where=str(path), known_models=known_models)
    schedule.source = str(path)
    schedule.source_sha256 = hashlib.sha256(raw).hexdigest()
    return schedule


def parse_schedule(
    spec: Any, steps: int, where: str = "<schedule>", known_models: Iterable[str] | None = None
) -> Schedule:
    """Validate a schedule mapping (the parsed YAML) and resolve it for ``steps`` steps."""
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise UserError(f"{where}: step count must be a positive integer, got {steps!r}")
    if not isinstance(spec, dict):
        raise UserError(f"{where}: expected a mapping with keys name and segments (or pattern), "
                        f"got {type(spec).__name__}")
    unknown = [k for k in spec if k not in ALLOWED_KEYS]
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}, "
                        f"expected only {', '.join(ALLOWED_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name.strip():
        raise UserError(f"{where}: 'name' must be a non-empty string, got {name!r}")
    description = spec.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise UserError(f"{where}: 'description' must be a string, got {type(description).__name__}")
    models = _parse_models(spec.get("models"), where, known_models)

    has_segments, has_pattern = "segments" in spec, "pattern" in spec
    if has_segments == has_pattern:
        raise UserError(f"{where}: expected exactly one of 'segments' or 'pattern', got "
                        f"{'both' if has_segments else 'neither'}")
    if has_segments:
        segments = _resolve_segments(spec["segments"], steps, models, where)
    else:
        segments = _resolve_pattern(spec["pattern"], steps, models, where)
    return Schedule(name=name, steps=steps, segments=tuple(segments), models=models, description=description)


def _parse_models(raw: Any, where: str, known_models: Iterable[str] | None) -> dict[str, str]:
    if raw is None:
        models = dict(DEFAULT_MODELS)
    else:
        if not isinstance(raw, dict) or not raw:
            raise UserError(f"{where}: 'models' must be a non-empty mapping alias -> model name, "
                            f"e.g. {{H: heavy, L: light}}")
        models = {}
        for alias, model in raw.items():
            if not isinstance(alias, str) or not _ALIAS_RE.fullmatch(alias):
                raise UserError(f"{where}: model alias {alias!r} must be one or more letters")
            if not isinstance(model, str) or not model.strip():
                raise UserError(f"{where}: model name of alias {alias!r} must be a non-empty string, "
                                f"got {model!r}")
            models[alias] = model
    if known_models is not None:
        known = list(known_models)
        for alias, model in models.items():
            if model not in known:
                raise UserError(f"{where}: alias {alias!r} names unknown model {model!r}, "
                                f"expected one of {', '.join(known)}")
    return models


def _parse_item(item: Any, models: Mapping[str, str], where: str, what: str) -> tuple[str, Fraction | None, bool]:
    """One notation string -> (alias, count or None if bare alias, is_percentage)."""
    if not isinstance(item, str):
        raise UserError(f"{where}: {what} {item!r} must be a string like L125 or L12.5%")
    m = _SEGMENT_RE.fullmatch(item.strip())
    if not m:
        raise UserError(f"{where}: {what} {item!r} does not match the notation <alias><count> or "
                        f"<alias><percent>% (e.g. L125, H75%)")
    alias, number, percent = m.group(1), m.group(2), m.group(3) == "%"
    if alias not in models:
        raise UserError(f"{where}: {what} {item!r} uses unknown model alias {alias!r}, "
                        f"expected one of {', '.join(models)}")
    if number is None:
        if percent:
            raise UserError(f"{where}: {what} {item!r} has a percent sign but no number")
        return alias, None, False
    try:
        value = Fraction(Decimal(number))
    except InvalidOperation:  # pragma: no cover - the regex only lets numbers through
        raise UserError(f"{where}: {what} {item!r} has an unreadable count") from None
    if value <= 0:
        raise UserError(f"{where}: {what} {item!r} must have a positive count")
    if not percent and value.denominator != 1:
        raise UserError(f"{where}: {what} {item!r}: an absolute count must be an integer "
                        f"(write a percentage as {item.strip()}%)")
    return alias, value, percent


def _resolve_segments(raw: Any, steps: int, models: Mapping[str, str], where: str) -> list[tuple[str, int]]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: 'segments' must be a non-empty list like [L125, H750, L125]")
    parsed = [_parse_item(item, models, where, "segment") for item in raw]
    for item, (_, value, _) in zip(raw, parsed, strict=True):
        if value is None:
            raise UserError(f"{where}: segment {item!r} lacks a count (bare aliases are for 'pattern')")
    kinds = {percent for _, _, percent in parsed}
    if len(kinds) > 1:
        raise UserError(f"{where}: segments mix absolute counts and percentages; use one form")

    if kinds == {False}:
        total = sum(int(v) for _, v, _ in parsed)
        if total != steps:
            raise UserError(f"{where}: segments sum to {total} steps, expected {steps} "
                            f"(the step count); write percentages to scale to any step count")
        return [(a, int(v)) for a, v, _ in parsed]

    total_pct = sum(v for _, v, _ in parsed)
    if total_pct != 100:
        raise UserError(f"{where}: segment percentages sum to {float(total_pct):g}%, expected exactly 100%")
    segments, cumulative, previous = [], Fraction(0), 0
    for item, (alias, value, _) in zip(raw, parsed, strict=True):
        cumulative += value
        boundary = _round_half_up(steps * cumulative / 100)
        count = boundary - previous
        if count <= 0:
            raise UserError(f"{where}: segment {item!r} rounds to {count} steps at {steps} steps; "
                            f"use a larger step count or absolute counts")
        segments.append((alias, count))
        previous = boundary
    return segments


def _resolve_pattern(raw: Any, steps: int, models: Mapping[str, str], where: str) -> list[tuple[str, int]]:
    if not isinstance(raw, list) or not raw:
        raise UserError(f"{where}: 'pattern' must be a non-empty list like [H, H, H, L]")
    unit: list[str] = []
    for item in raw:
        alias, value, percent = _parse_item(item, models, where, "pattern element")
        if percent:
            raise UserError(f"{where}: pattern element {item!r}: percentages are not allowed in a pattern")
        unit.extend([alias] * (1 if value is None else int(value)))
    # repeat the unit and cut at T (the last repetition may be partial), then run-length encode
    per_step = [unit[i % len(unit)] for i in range(steps)]
    segments: list[tuple[str, int]] = []
    for alias in per_step:
        if segments and segments[-1][0] == alias:
            segments[-1] = (alias, segments[-1][1] + 1)
        else:
            segments.append((alias, 1))
    return segments


def _round_half_up(x: Fraction) -> int:
    return int((x + Fraction(1, 2)).__floor__())


# ---- writing -------------------------------------------------------------------------------------------


def dump_schedule(schedule: Schedule, path: str | os.PathLike | None = None) -> str:
    """Serialize ``schedule`` to YAML with absolute segments (exact for its T); write atomically if ``path``.

    ``load_schedule(path, schedule.steps)`` gives back an equal schedule (segments, models, name).
    """
    spec = schedule.to_dict()
    lines = [f"# {schedule.steps} steps; absolute segments (valid only for T = {schedule.steps})",
             f"name: {_yaml_scalar(spec['name'])}"]
    if "description" in spec:
        lines.append(f"description: {_yaml_scalar(spec['description'])}")
    if "models" in spec:
        lines.append("models: {" + ", ".join(f"{a}: {_yaml_scalar(m)}" for a, m in spec["models"].items()) + "}")
    lines.append("segments: [" + ", ".join(spec["segments"]) + "]")
    text = "\n".join(lines) + "\n"
    if path is not None:
        atomic_write_text(path, text)
    return text


def _yaml_scalar(value: str) -> str:
    # yaml.safe_dump quotes exactly when needed; strip its document-end marker
    return yaml.safe_dump(value, default_style=None, width=10**9).strip().removesuffix("...").strip()
