"""The lock (constraints.txt) pins every dependency of pyproject.toml, and this environment matches it."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep and version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[canonical(name)] = version
    return pins


def declared() -> list[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for group in project["optional-dependencies"].values() for d in group]
    return sorted({canonical(re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0]) for spec in specs})


def test_every_declared_dependency_is_pinned():
    pins = locked()
    assert [name for name in declared() if name not in pins] == []


def test_torch_is_the_pinned_cpu_release():
    assert locked()["torch"] == "2.13.0"


@pytest.mark.parametrize("name", declared())
def test_this_environment_matches_the_lock(name):
    installed = metadata.version(name).split("+")[0]  # torch's local tag (+cpu) is not part of the pin
    assert installed == locked()[name], f"{name} {installed} is installed, constraints.txt pins {locked()[name]}"
