"""The whole `dvc repro` pipeline on the smoke profile, in a temporary copy of the project.

Runs every stage for real (assets from the registries or the warm cache, training, sampling, judge, report),
then checks that a second `dvc repro` does nothing and that touching one schedule reruns only its stages.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mdlm import onednn

ROOT = Path(__file__).resolve().parents[1]
pytestmark = [pytest.mark.network, pytest.mark.slow]


# A wiring test, not a results run: every stage runs, on the fewest schedules and the smallest sizes that still
# exercise it. Each schedule costs three stages (sample, evaluate, flops; a few seconds each, mostly starting
# torch and the judge); all-heavy is the baseline, light-last the one the tests touch, sandwich what the
# optimizer's budget and claims (b) and (c) name.
WIRING_SCHEDULES = ["all-heavy", "sandwich", "light-last"]
WIRING_SIZES = {
    "importance": {"bins": 4, "num_sequences": 4, "batch_size": 4, "swap_segments": 2, "swap_samples": 2},
    "search": {"num_samples": 2},  # 4 segments: the optimizer's fit on the search needs 3 placements or more
    "frontier": {"baseline_models": ["heavy"], "families": ["sandwich"], "num_samples": 2},
    "timing": {"schedules": ["all-heavy", "sandwich"]},  # a subset, as the tiny profile times: light-last untimed
}
UNTIMED = {"assets", "prepare", "train@heavy", "train@light"}  # stages whose outputs carry no time


def _tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    return [f for f in out.splitlines() if (ROOT / f).is_file()]


def _dvc(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    dvc = shutil.which("dvc", path=os.path.dirname(sys.executable)) or "dvc"
    return subprocess.run([dvc, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=1800)


@pytest.fixture(scope="module")
def smoke_project(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    root = tmp_path_factory.mktemp("project")
    for rel in _tracked_files():
        dest = root / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, dest)
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["profile"] = "smoke"
    params["schedules"], smoke = WIRING_SCHEDULES, params["profiles"]["smoke"]
    for section, values in WIRING_SIZES.items():
        smoke[section].update(values)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (root / "dvc.lock").unlink(missing_ok=True)
    # one torch thread per stage: at smoke sizes a second OpenMP thread buys nothing, and when the other core is
    # busy (a 2-core machine running anything else) it makes every small op several times slower
    env = dict(os.environ, DVC_NO_ANALYTICS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    env.pop("MDLM_ROOT", None)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    subprocess.run(["git", "add", "-A"], cwd=root, check=True)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "copy"], cwd=root,
                   check=True)
    result = _dvc(["repro"], root, env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return root, env


def test_repro_produces_report_and_metrics(smoke_project):
    root, _ = smoke_project
    report = (root / "reports" / "results.md").read_text()
    assert "sandwich" in report and "all-heavy" in report
    schedules = yaml.safe_load((root / "params.yaml").read_text())["schedules"]
    for name in schedules:
        assert (root / "runs" / "smoke" / "metrics" / f"{name}.json").is_file()


def _stage_times(root: Path) -> dict[str, tuple]:
    summary = json.loads((root / "reports" / "summary.json").read_text())
    return {r["stage"]: (r["wall_s"], r["cpu_s"]) for r in summary["stage_times"]["stages"]}


def test_every_stage_but_the_untimed_records_its_time(smoke_project):
    root, _ = smoke_project
    times = _stage_times(root)
    # dvc.yaml's stages for the wiring schedules: 4 untimed, importance, 3 per schedule, timing, search, optimize,
    # 3 + 3 derived, frontier, report
    assert len(times) == 4 + 1 + 3 * len(WIRING_SCHEDULES) + 3 + 6 + 2
    assert {s for s, (wall, _) in times.items() if wall is None} == UNTIMED
    assert all(wall > 0 and cpu > 0 for s, (wall, cpu) in times.items() if s not in UNTIMED)
    md = (root / "reports" / "results.md").read_text()
    assert "## Stage times" in md and f"| **total** ({len(times) - 4} of {len(times)} stages recorded) |" in md


def test_the_report_shows_wall_clock_only_for_the_timed_schedules(smoke_project):
    root, _ = smoke_project
    timed = json.loads((root / "runs" / "smoke" / "timing" / "timing.json").read_text())
    assert [r["schedule"] for r in timed["schedules"]] == WIRING_SIZES["timing"]["schedules"]
    md = (root / "reports" / "results.md").read_text()
    assert "This profile times 2 schedules (`timing.schedules`: all-heavy, sandwich)" in md
    lines = md.splitlines()
    top = next(i for i, line in enumerate(lines) if line.startswith("| schedule | light steps |"))
    column = lines[top].split(" | ").index("wall-clock saved [CI]")
    table = lines[top + 2:lines.index("", top)]  # the results table's rows, one per schedule
    cells = {row.split(" | ")[0].strip("| "): row.split(" | ")[column] for row in table}
    assert cells["light-last"] == "–" and cells["sandwich"] != "–" and cells["all-heavy"] != "–"


def test_second_repro_is_a_noop(smoke_project):
    root, env = smoke_project
    result = _dvc(["repro"], root, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Running stage" not in result.stdout, result.stdout
    status = _dvc(["status", "dvc.yaml"], root, env)
    assert status.returncode == 0 and "changed" not in status.stdout, status.stdout


def test_touching_one_schedule_reruns_only_its_stages(smoke_project):
    root, env = smoke_project
    path = root / "schedules" / "light-last.yaml"
    path.write_text(path.read_text() + "\n# touched\n")
    times_before = _stage_times(root)
    result = _dvc(["repro"], root, env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ran = {line.split("'")[1] for line in result.stdout.splitlines() if line.startswith("Running stage")}
    assert {"sample@light-last", "evaluate@light-last", "flops@light-last"} <= ran
    assert not any(s.startswith(("sample@", "evaluate@", "flops@")) and not s.endswith("@light-last") for s in ran)
    assert not {"train@heavy", "train@light", "importance", "search"} & ran
    # a stage that did not rerun keeps the time of the run that made its outputs
    times_after = _stage_times(root)
    kept = [s for s in times_before if s not in ran and s != "report"]
    assert "sample@sandwich" in kept and all(times_after[s] == times_before[s] for s in kept)


def readme_python_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Python API", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_python_example_runs_verbatim(smoke_project, one_thread, monkeypatch, capsys):
    """The README's Python API block, executed as written, from the project root of the smoke run (which has
    the bpe-8k tokenizer, the judge asset and the shipped tiny pair); on one torch thread, as the stages."""
    root, _ = smoke_project
    monkeypatch.chdir(root)
    monkeypatch.setenv("MDLM_ROOT", str(root))
    exec(compile(readme_python_example(), "README.md (Python API)", "exec"), {})
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3
    savings = eval(lines[1], {})  # the printed dict of savings
    assert savings["blocks_only"] == pytest.approx(1 / 6) and 0 < savings["executed"] < 0.5
    assert float(lines[2]) > 1.0


def test_sample_workers_shard_and_gather_the_same_run(smoke_project, tmp_path):
    """`mdlm sample --workers 2` relaunches itself as two torchrun processes: rank 0 writes the same samples
    (indices, unmasking, row-forwards) as one process does, and the record states the world size."""
    root, env = smoke_project
    outs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}.jsonl"
        done = subprocess.run([sys.executable, "-m", "mdlm", "sample", "--profile", "smoke", "--schedule", "sandwich",
                               "--workers", str(workers), "--num-samples", "5", "--out", str(out), "--no-progress"],
                              cwd=root, env=env, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        outs[workers] = [json.loads(line) for line in out.read_text().splitlines()]
        meta = json.loads(out.with_suffix(".meta.json").read_text())
        assert meta["world_size"] == workers
        # the GEMMs the folded fp32 denoisers ran: this CPU's rule (`mdlm.onednn`), recorded per model
        assert meta["sampling_gemm"] == {m: onednn.sampling_gemm() for m in ("heavy", "light")}
        # the command's own time (with workers: the launching process's, stamped after they finish)
        assert meta["stage_time"]["wall_s"] > meta["wall_time_s"] and meta["stage_time"]["cpu_s"] > 0
    one, two = outs[1], outs[2]
    assert [r["sample_index"] for r in two] == [0, 1, 2, 3, 4]
    for key in ("sample_index", "row_forwards", "final_pass", "token_ids"):
        assert [r[key] for r in two] == [r[key] for r in one], key


def test_timing_workers_share_the_rounds_and_sample_the_same_tokens(smoke_project, tmp_path):
    """`mdlm timing --workers 2` spawns two processes that take rounds 0-1 and 2 of 3 (rotations continuing
    across them), each sampling the same indices: one digest per schedule over all rounds of both workers."""
    root, env = smoke_project
    out = tmp_path / "timing.json"
    done = subprocess.run([sys.executable, "-m", "mdlm", "timing", "--profile", "smoke", "--workers", "2",
                           "--rounds", "3", "--samples", "2", "--steps", "16", "--out", str(out)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(out.read_text())
    names = WIRING_SIZES["timing"]["schedules"]  # the profile's timing.schedules, as no --schedules was given
    assert r["worker_of_round"] == [0, 0, 1] and r["settings"]["workers"] == 2
    assert r["sampling_gemm"] == {m: onednn.sampling_gemm() for m in ("heavy", "light")}
    assert r["orders"] == [names[k:] + names[:k] for k in range(3)]
    for rec in r["schedules"]:
        assert len(rec["wall_s"]) == 3 and all(t > 0 for t in rec["wall_s"]) and rec["same_tokens_every_round"]
    # the command's CPU time counts its workers' (they sampled; the parent only waited)
    assert r["stage_time"]["cpu_s"] >= sum(sum(rec["cpu_s"]) for rec in r["schedules"])
