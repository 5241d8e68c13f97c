"""`mdlm <command> ...`: the pipeline's entry points.

Each command lives in its own module `mdlm.commands.<name>`, which provides ``add_arguments(parser)`` and
``main(args) -> int``. Only the module of the command being run is imported, so `mdlm assets` does not pay
for torch.
Bad input raises ``UserError``; it is printed as one line and the exit status is 2.
"""

from __future__ import annotations

import argparse
import sys
from types import ModuleType

from mdlm import clock
from mdlm.errors import UserError

# command -> one-line help
COMMANDS: dict[str, str] = {
    "assets": "fetch and verify the pinned assets of a profile",
    "prepare": "split, tokenize and pack the corpus of a profile",
    "train": "train the heavy or the light MDLM of a profile",
    "ship": "pin a trained heavy/light pair as the profile's shipped checkpoints",
    "sample": "sample with a model schedule",
    "flops": "FLOP accounting of a schedule",
    "timing": "controlled wall-clock savings of the schedules (interleaved rounds in one process)",
    "evaluate": "judge-based generative perplexity and entropy of samples",
    "importance": "per-timestep loss/KL of heavy vs light, and swap sensitivity",
    "search": "exhaustive search over coarse light/heavy segment placements",
    "optimize": "propose a schedule for a FLOP budget",
    "report": "write reports/results.md and the figures",
    "frontier": "the quality-compute frontier: placement families vs fewer steps at equal executed FLOPs",
}


def command_module(command: str) -> ModuleType:  # noqa: C901 - one plain import per command
    """Import only the module of ``command`` (plain imports, so every edge is visible to readers and tests)."""
    if command == "assets":
        from mdlm.commands import assets as module
    elif command == "prepare":
        from mdlm.commands import prepare as module
    elif command == "train":
        from mdlm.commands import train as module
    elif command == "ship":
        from mdlm.commands import ship as module
    elif command == "sample":
        from mdlm.commands import sample as module
    elif command == "flops":
        from mdlm.commands import flops as module
    elif command == "timing":
        from mdlm.commands import timing as module
    elif command == "evaluate":
        from mdlm.commands import evaluate as module
    elif command == "importance":
        from mdlm.commands import importance as module
    elif command == "search":
        from mdlm.commands import search as module
    elif command == "optimize":
        from mdlm.commands import optimize as module
    elif command == "report":
        from mdlm.commands import report as module
    elif command == "frontier":
        from mdlm.commands import frontier as module
    else:
        raise KeyError(command)
    return module


def _usage() -> str:
    width = max(len(c) for c in COMMANDS)
    lines = ["usage: mdlm <command> [options]", "", "commands:"]
    lines += [f"  {name.ljust(width)}  {help_}" for name, help_ in COMMANDS.items()]
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
    clock.start()  # before the import: a stage's recorded time includes loading torch
    module = command_module(command)
    parser = argparse.ArgumentParser(prog=f"mdlm {command}", description=COMMANDS[command])
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    args.argv = argv  # the command line itself, for a command that relaunches itself (sample's workers)
    try:
        return int(module.main(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file the command could not read or write (disk, permissions, a path): one line
        print(f"error: {exc.filename or 'a file'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
