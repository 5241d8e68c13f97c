"""`mdlm train --profile P --model heavy|light`: train one MDLM of a profile, or install its shipped checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

from mdlm.checkpoints import install_shipped
from mdlm.paths import model_dir
from mdlm.profiles import add_profile_argument, load_profile
from mdlm.train import TrainJob, train


def add_arguments(p) -> None:
    add_profile_argument(p)
    p.add_argument("--model", required=True, choices=["heavy", "light"])
    p.add_argument("--resume", action="store_true", help="continue from the last checkpoint in the output folder")
    p.add_argument("--out", type=Path, default=None, help="output folder (default runs/<profile>/models/<model>)")
    p.add_argument("--steps", type=int, default=None, help="override train.steps")
    p.add_argument("--max-minutes", type=float, default=None, help="stop (and checkpoint) after this wall time")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop (and checkpoint) after this step; the LR schedule still spans --steps/train.steps")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--retrain", action="store_true",
                   help="train from scratch even when the profile ships a checkpoint (checkpoints.source: shipped)")


def main(args) -> int:
    profile = load_profile(args.profile, overrides={"train": {"steps": args.steps}})
    out = Path(args.out) if args.out is not None else model_dir(profile.name, args.model)
    if profile.checkpoints.source == "shipped" and not args.retrain:
        install_shipped(profile.checkpoints, args.model, out)
        result = {"step": None, "shipped": True, "out": str(out),
                  "note": "installed the shipped, hash-verified checkpoint (checkpoints.source=train or --retrain "
                          "trains from scratch)"}
    else:
        job = TrainJob(name=profile.name, which=args.model, tokenizer=profile.tokenizer, model=profile.model,
                       settings=profile.train, seq_len=profile.data.seq_len, out=out)
        result = train(job, resume=args.resume, max_minutes=args.max_minutes, stop_at=args.stop_at,
                       device=args.device)
    print(json.dumps(result))
    return 0
