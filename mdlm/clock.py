"""How long the running `mdlm` command has taken: wall seconds and CPU seconds of its process.

The CLI dispatcher calls `start()` before it imports the command's module (so importing torch counts), and a
pipeline command puts `elapsed()` under `STAGE_TIME_KEY` in the JSON output it writes last. The time then
travels with the output: a stage that DVC restores from its cache keeps the time of the run that made it.
"""

from __future__ import annotations

import os
import time

STAGE_TIME_KEY = "stage_time"


def _cpu_seconds() -> float:
    # user + system time of this process (all its threads) and of the child processes it has waited for
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


_started = (time.perf_counter(), _cpu_seconds())  # until `start()` is called: since this module was imported


def start() -> None:
    """Start timing a command (again, when one process runs several commands, as the tests do)."""
    global _started
    _started = (time.perf_counter(), _cpu_seconds())


def elapsed() -> dict[str, float]:
    """{"wall_s", "cpu_s"} since `start()`: the record a stage keeps under `STAGE_TIME_KEY`."""
    wall0, cpu0 = _started
    return {"wall_s": round(time.perf_counter() - wall0, 3), "cpu_s": round(_cpu_seconds() - cpu0, 3)}
