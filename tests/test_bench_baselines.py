"""The committed benchmark baselines (`bench/baselines/<CPU capability>/`, chosen by `bench/conftest.py`): each
folder holds the runs of the kind of machine it is named for, read from the CPU flags each run recorded."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

BASELINES = Path(__file__).resolve().parents[1] / "bench" / "baselines"
KINDS = sorted(p.name for p in BASELINES.iterdir() if p.is_dir())


def test_there_is_a_baseline_for_each_kind_of_project_machine():
    assert {"AVX2", "AVX512"} <= set(KINDS)


@pytest.mark.parametrize(("storage", "remapped"), [(f"file://{BASELINES}", True), (str(BASELINES), True),
                                                   ("file://.benchmarks", False), (None, False)])
def test_the_bench_storage_of_the_baselines_means_this_kinds_folder(monkeypatch, storage, remapped):
    from bench import conftest

    monkeypatch.setattr(conftest, "cpu_capability", lambda: "AVX2")
    config = SimpleNamespace(option=SimpleNamespace(benchmark_storage=storage))
    config.getoption = lambda name, default=None: getattr(config.option, name, default)
    conftest.pytest_configure(config)
    assert config.option.benchmark_storage == (f"file://{BASELINES / 'AVX2'}" if remapped else storage)


@pytest.mark.parametrize("kind", KINDS)
def test_a_baseline_was_recorded_on_its_kind_of_machine(kind):
    runs = sorted((BASELINES / kind).glob("*/0001_*.json"))
    assert runs, f"no 0001 run under bench/baselines/{kind}"
    for run in runs:
        flags = set(json.loads(run.read_text())["machine_info"]["cpu"]["flags"])
        # torch names the capability after the widest vector unit it uses: AVX512 needs avx512f
        assert ("avx512f" in flags) == (kind == "AVX512") and "avx2" in flags, run
