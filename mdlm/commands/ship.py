"""`mdlm ship --profile P --from DIR`: pin a trained heavy/light pair as the profile's shipped checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

from mdlm.checkpoints import shipped_dir
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.ship import ship


def add_arguments(p) -> None:
    add_profile_argument(p)
    p.add_argument("--from", dest="source", type=Path, required=True,
                   help="folder with heavy/ and light/ written by `mdlm train --out`")
    p.add_argument("--command", required=True, help="the exact training command(s), recorded in the manifest")
    p.add_argument("--notes", default="", help="hardware, wall time, anything a reader needs")


def main(args) -> int:
    profile = load_profile(args.profile)
    record = {"tokenizer": profile.tokenizer,
              **{k: getattr(profile, k).model_dump() for k in ("data", "model", "train")}}
    manifest = ship(profile.name, profile.tokenizer, profile.train, profile.data.seq_len, record,
                    shipped_dir(profile.checkpoints), args.source, args.command, args.notes)
    summary = {w: {k: m[k] for k in ("params", "steps", "tokens_seen", "valid_nelbo_bf16_full_split")}
               for w, m in manifest["models"].items()}
    print(json.dumps({"gap_nats": manifest["heavy_minus_light_gap_nats"], **summary}, indent=2))
    return 0
