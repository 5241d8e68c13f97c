"""`mdlm <command> ...`: the pipeline's entry points.

Each command lives in its own module, which provides ``add_arguments(parser)`` and ``main(args) -> int``.
Only the module of the command being run is imported, so `mdlm assets` does not pay for torch.
Bad input raises ``UserError``; it is printed as one line and the exit status is 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from mdlm.errors import UserError

# command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "assets": ("mdlm.assets", "fetch and verify the pinned assets of a profile"),
    "prepare": ("mdlm.data", "split, tokenize and pack the corpus of a profile"),
    "train": ("mdlm.train", "train the heavy or the light MDLM of a profile"),
    "ship": ("mdlm.ship", "pin a trained heavy/light pair as the profile's shipped checkpoints"),
    "sample": ("mdlm.sampler", "sample with a model schedule"),
    "flops": ("mdlm.flops", "FLOP accounting of a schedule"),
    "evaluate": ("mdlm.evaluate", "judge-based generative perplexity and entropy of samples"),
    "importance": ("mdlm.importance", "per-timestep loss/KL of heavy vs light, and swap sensitivity"),
    "search": ("mdlm.search", "exhaustive search over coarse light/heavy segment placements"),
    "optimize": ("mdlm.optimize", "propose a schedule for a FLOP budget"),
    "report": ("mdlm.report", "write reports/results.md and the figures"),
}


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: mdlm <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, (_, help_) in COMMANDS.items()]
    lines += ["", "`mdlm <command> --help` lists a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage())
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"error: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, help_ = COMMANDS[command]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"mdlm {command}", description=help_)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.main(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
