"""Corpus sources: the documents of a profile's `data.sources`, read offline and verified where pinned.

  sotu, bbc, wiki    the embedded corpus, read from data/assets (see mdlm/assets.yaml)
  openwebtext        `datasets.load_dataset("openwebtext")` (needs the Hugging Face hub)
  openwebtext-archive
                     the same corpus from the archive that data.dvc pins (data/openwebtext.tar.xz), read
                     locally and verified against its sha256 first; {name, archive, sha256} reads another copy
  {name, files, format: text|json, field}
                     local files through `datasets.load_dataset("text"|"json", data_files=...)`, the same code
                     path as openwebtext; with format text every line is a document.
A document is one text with leading/trailing whitespace stripped; empty documents are skipped and counted.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mdlm.errors import UserError
from mdlm.paths import project_root

EMBEDDED_SOURCES = ("sotu", "bbc", "wiki")
HUB_SOURCES = ("openwebtext",)
ARCHIVE_SOURCES = ("openwebtext-archive",)
# The zenodo OpenWebText archive (record 3834942) that data.dvc pins and the Hugging Face loader downloads:
# its published download checksum and size.
OWT_ARCHIVE = {"path": "data/openwebtext.tar.xz",
               "sha256": "9fe39d154c5bc67da8c359415372b79510eb1e2edb0d035fe4f7fc3a732b9336",
               "size": 12_880_027_468}


def read_sotu() -> Iterator[str]:
    from mdlm.assets import asset_files

    for path in asset_files("sotu"):
        yield path.read_text(encoding="utf-8")


def read_bbc() -> Iterator[str]:
    from mdlm.assets import asset_files

    for path in asset_files("bbc"):
        # One article is not valid UTF-8; the replacement character keeps the rest of it.
        yield path.read_text(encoding="utf-8", errors="replace")


def read_wiki() -> Iterator[str]:
    from mdlm.assets import asset_path

    path = asset_path("wiki") / "summaries_en-us.json"
    entries = json.loads(path.read_text(encoding="utf-8"))
    for title in sorted(entries):
        extract = entries[title].get("extract") if isinstance(entries[title], dict) else None
        if not isinstance(extract, str):
            raise UserError(f"{path}: entry {title!r} has no 'extract' text")
        yield extract


def read_hf_texts(path: str, *, data_files: Any = None, split: str = "train", field: str = "text",
                  **kwargs: Any) -> tuple[int, Iterator[str]]:
    """(number of documents, their texts) of a `datasets.load_dataset(path, ...)` split."""
    import datasets

    try:
        ds = datasets.load_dataset(path, data_files=data_files, split=split, **kwargs)
    except (ConnectionError, FileNotFoundError, ValueError, OSError) as exc:
        raise UserError(f"datasets.load_dataset({path!r}): {type(exc).__name__}: "
                        f"{str(exc).splitlines()[0] if str(exc) else ''}") from None
    if field not in ds.column_names:
        raise UserError(f"dataset {path!r}: no field {field!r} (fields: {', '.join(ds.column_names)})")

    def texts() -> Iterator[str]:
        for batch in ds.select_columns([field]).iter(batch_size=1000):
            yield from batch[field]

    return len(ds), texts()


def read_local_files(files: str | list[str], fmt: str = "text", field: str = "text") -> tuple[int, Iterator[str]]:
    """Local text (one document per line) or json/jsonl files, through the same `load_dataset` path."""
    if fmt not in ("text", "json"):
        raise UserError(f"local source: format {fmt!r}, expected 'text' or 'json'")
    files = [files] if isinstance(files, str) else list(files)
    return read_hf_texts(fmt, data_files=[str(f) for f in files], field=field)


def verify_owt_archive(path: Path, sha256: str) -> None:
    from mdlm.io import sha256_file

    if not path.is_file():
        raise UserError(f"{path}: OpenWebText archive not found (`dvc update data.dvc` on a machine with "
                        f"internet, or `dvc pull` from a remote that has it)")
    digest = sha256_file(path)
    if digest != sha256:
        raise UserError(f"{path}: sha256 {digest}, expected {sha256} (a different or damaged archive)")


def read_owt_archive(path: str | Path, sha256: str) -> Iterator[str]:
    """Documents of an OpenWebText archive: a tar.xz of subset tar.xz files of one .txt per document.

    The archive is verified against ``sha256`` before anything is read. Order: subsets in archive order,
    documents by file name within a subset (deterministic for a given archive).
    """
    path = Path(path)
    verify_owt_archive(path, sha256)
    yield from _owt_archive_documents(path)


def _owt_archive_documents(path: Path) -> Iterator[str]:
    import io
    import tarfile

    try:
        with tarfile.open(path, mode="r|xz") as outer:
            for member in outer:
                if not (member.isfile() and member.name.endswith(".xz")):
                    continue
                blob = outer.extractfile(member).read()
                with tarfile.open(fileobj=io.BytesIO(blob), mode="r:xz") as subset:
                    docs = sorted((m for m in subset.getmembers() if m.isfile() and m.name.endswith(".txt")),
                                  key=lambda m: m.name)
                    for doc in docs:
                        yield subset.extractfile(doc).read().decode("utf-8", errors="replace")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UserError(f"{path}: cannot read the archive ({type(exc).__name__}: {exc})") from None


@dataclass
class Source:
    name: str
    open: Callable[[], Iterator[str]]     # a fresh iterator over the raw texts, in a fixed order
    provenance: dict[str, Any] = field(default_factory=dict)


def resolve_source(spec: Any) -> Source:
    """A `data.sources` entry → Source. Embedded sources need their assets (`ensure_assets(["corpus"])`)."""
    if isinstance(spec, str):
        if spec in EMBEDDED_SOURCES:
            from mdlm.asset_manifest import load_manifest

            asset = load_manifest()[spec]
            readers = {"sotu": read_sotu, "bbc": read_bbc, "wiki": read_wiki}
            return Source(spec, readers[spec], {"asset": spec, "package": asset.package,
                                                "archive_sha256": asset.archive_sha256})
        if spec == "openwebtext":
            return Source(spec, lambda: read_hf_texts("openwebtext")[1],
                          {"dataset": "openwebtext", "split": "train"})
        if spec == "openwebtext-archive":
            spec = {"name": "openwebtext", "archive": OWT_ARCHIVE["path"], "sha256": OWT_ARCHIVE["sha256"]}
        else:
            raise UserError(f"params.yaml: data.sources: unknown source {spec!r}, expected one of "
                            f"{', '.join(EMBEDDED_SOURCES + HUB_SOURCES + ARCHIVE_SOURCES)} or a mapping "
                            f"with 'files' or 'archive'")
    if isinstance(spec, dict) and "archive" in spec:
        sha = spec.get("sha256")
        if not (isinstance(sha, str) and len(sha) == 64):
            raise UserError(f"params.yaml: data.sources: archive {spec['archive']!r} needs its sha256 (64 hex digits)")
        archive = Path(spec["archive"])
        archive = archive if archive.is_absolute() else project_root() / archive
        verified: list[bool] = []  # prepare reads the sources twice; hash the (12.9 GB) archive only once

        def open_archive() -> Iterator[str]:
            if not verified:
                verify_owt_archive(archive, sha)
                verified.append(True)
            return _owt_archive_documents(archive)

        return Source(spec.get("name") or "archive", open_archive, {"archive": str(spec["archive"]), "sha256": sha})
    if isinstance(spec, dict) and "files" in spec:
        name = spec.get("name") or "local"
        fmt, fld = spec.get("format", "text"), spec.get("field", "text")
        return Source(name, lambda: read_local_files(spec["files"], fmt, fld)[1],
                      {"files": spec["files"], "format": fmt, "field": fld})
    raise UserError(f"params.yaml: data.sources: entry {spec!r}, expected a source name, "
                    f"{{name, files, format, field}} or {{name, archive, sha256}}")


def iter_documents(sources: list[Source]) -> Iterator[tuple[str, str]]:
    """(source name, text) of every document, sources in order; whitespace-only texts give text ''."""
    for source in sources:
        for text in source.open():
            yield source.name, (text or "").strip()


