"""`mdlm assets`: fetch, verify and extract the pinned assets that a profile (or every profile) needs."""

from __future__ import annotations

from mdlm.asset_manifest import load_manifest, select_assets
from mdlm.assets import ensure_asset
from mdlm.paths import assets_dir
from mdlm.profiles import add_profile_argument, load_profile


def add_arguments(parser) -> None:
    add_profile_argument(parser)
    parser.add_argument("--all", action="store_true", help="fetch every asset in the manifest")


def main(args) -> int:
    manifest = load_manifest()
    if args.all:
        groups = sorted({a.group for a in manifest.values()})
    else:
        groups = load_profile(args.profile).assets
    for asset in select_assets(groups, manifest):
        fetched = ensure_asset(asset)
        print(f"{'fetched' if fetched else 'ok':8} {asset.name:18} {asset.package:32} {assets_dir() / asset.name}")
    return 0
