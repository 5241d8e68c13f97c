"""FLOP accounting: hand-computed counts, fvcore vs analytic, the paper's 16.7%, effective accounting."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mdlm import flops
from mdlm.errors import UserError
from mdlm.model import DiTConfig, model_config
from mdlm.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
SANDWICH = ROOT / "schedules" / "sandwich.yaml"
ALL_HEAVY = ROOT / "schedules" / "all-heavy.yaml"

# d = 32, 2 heads, cond 16, 3 blocks, MLP ratio 4, L = 8, V = 100
SMALL = DiTConfig(vocab_size=100, hidden_size=32, n_blocks=3, n_heads=2, cond_dim=16, length=8, dropout=0.0)


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))


def test_analytic_small_config_by_hand():
    # one block: qkv 32*96*8 = 24576, out 32*32*8 = 8192, MLP 2 * 32*128*8 = 65536  -> 98304 (= 12 d^2 L)
    #            QK^T 8*8*32 = 2048, PV 8*8*32 = 2048                              ->  4096 (= 2 L^2 d)
    blocks = 3 * (98304 + 4096)  # 307200
    head = 32 * 100 * 8  # 25600
    # adaLN: 3 blocks * 16*192 = 9216, final 16*64 = 1024; time MLP 256*16 + 16*16 = 4352
    other = 9216 + 1024 + 4352  # 14592
    m = flops.analytic_macs(SMALL)
    assert (m.blocks, m.head, m.other) == (blocks, head, other) == (307200, 25600, 14592)
    assert m.total == 347392
    assert m.flops()["total"] == 2 * 347392  # FLOPs = 2 x MACs
    assert flops.analytic_macs(SMALL, batch=2).total == 2 * 347392
    assert flops.analytic_macs(SMALL, length=16).blocks == 3 * (4 * 98304 // 2 + 4 * 4096)  # linear 2x, attn 4x


def test_fvcore_small_config_by_hand_counts_sdpa():
    m = flops.fvcore_macs(SMALL)
    # fvcore's only extra: LayerNorm at 4 units per element, 2 per block (8*32*4 = 1024 each), 1 in the head
    assert m.blocks == 307200 + 3 * 2 * 1024
    assert m.head == 25600 + 1024
    assert m.other == 14592
    # without the SDPA handle fvcore would miss the 3 * 4096 attention MACs and list the op as unsupported
    assert flops.SDPA_OP not in flops.fvcore_uncounted_ops(SMALL)
    assert flops.fvcore_macs(SMALL, batch=2).total == 2 * m.total


def test_sdpa_handle_formula():
    class Shape:  # stands in for a JIT value with a complete tensor type
        def __init__(self, shape):
            self.shape = shape

        def isCompleteTensor(self):
            return True

        def type(self):
            return self

        def sizes(self):
            return self.shape

    q, k, v = Shape([2, 3, 5, 8]), Shape([2, 3, 7, 8]), Shape([2, 3, 7, 4])
    assert flops._sdpa_macs([q, k, v], []) == 2 * 3 * 5 * 7 * (8 + 4)


@pytest.mark.parametrize("which", ["heavy", "light"])
def test_fvcore_agrees_with_analytic_at_tiny_sizes(which):
    cfg = model_config(load_profile("tiny"), which, 8192)  # d 192, 3 heads, L 128
    a, f = flops.analytic_macs(cfg), flops.fvcore_macs(cfg)
    assert abs(f.total / a.total - 1) < 0.01
    assert abs(f.blocks / a.blocks - 1) < 0.01
    assert abs(f.head / a.head - 1) < 0.01
    assert f.other == a.other


def test_owt_sandwich_acceptance():
    r = flops.flops_report(load_profile("owt"), SANDWICH, measure=False)
    assert r["steps_per_model"] == {"heavy": 750, "light": 250}
    assert round(r["blocks_only_saving"], 4) == 0.1667
    assert abs(r["full_saving"] - 0.121) < 0.001  # 0.1215: (250/1000) * (1 - 149.9/291.7)
    heavy = r["models"]["heavy"]["analytic"]["flops"]
    light = r["models"]["light"]["analytic"]["flops"]
    # mdlm-reference.md 10.1: 212.60 / 70.87 GFLOPs of blocks, head 79.05, totals 291.6 / 149.9
    assert round(heavy["blocks"] / 1e9, 2) == 212.60 and round(light["blocks"] / 1e9, 2) == 70.87
    assert round(heavy["head"] / 1e9, 2) == 79.05
    assert round(heavy["total"] / 1e9, 1) == 291.7 and round(light["total"] / 1e9, 1) == 149.9


def test_all_light_and_all_heavy_savings():
    costs = {"heavy": flops.ForwardMacs(12, 5, 1), "light": flops.ForwardMacs(4, 5, 1)}
    assert flops.schedule_savings({"heavy": 10, "light": 0}, costs) == {"blocks_only_saving": 0.0,
                                                                         "full_saving": 0.0}
    s = flops.schedule_savings({"heavy": 0, "light": 10}, costs)
    assert s["blocks_only_saving"] == pytest.approx(2 / 3)
    assert s["full_saving"] == pytest.approx(8 / 18)


def test_cli_writes_json_atomically(tmp_path, capsys):
    from mdlm.cli import main

    out = tmp_path / "sub" / "flops.json"
    assert main(["flops", "--profile", "tiny", "--schedule", "sandwich", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["steps_per_model"] == {"heavy": 750, "light": 250}
    assert round(written["blocks_only_saving"], 4) == 0.1667
    assert abs(written["models"]["heavy"]["fvcore_over_analytic"] - 1) < 0.01
    assert [p.name for p in out.parent.iterdir()] == ["flops.json"]  # no temp file left behind


def test_unknown_schedule_is_user_error(tmp_path):
    with pytest.raises(UserError, match="not found"):
        flops.flops_report(load_profile("tiny"), tmp_path / "nope.yaml", measure=False)


def test_cli_reports_user_error(tmp_path, capsys):
    from mdlm.cli import main

    assert main(["flops", "--profile", "tiny", "--schedule", str(tmp_path / "nope.yaml")]) == 2
    assert "nope.yaml" in capsys.readouterr().err


def _write_samples(path: Path, rows: list[dict], schedule: str = "sandwich", steps: int = 8) -> Path:
    base = {"schedule": schedule, "steps": steps, "noise_removal": True}
    path.write_text("".join(json.dumps({**base, **r}) + "\n" for r in rows))
    return path


def test_effective_accounting_from_samples(tmp_path):
    # T = 8: the sandwich is L1, H6, L1; the final pass is a 9th forward (by the light model)
    samples = _write_samples(tmp_path / "s.jsonl", [
        {"sample_index": 0, "row_forwards": {"heavy": 6, "light": 3}},  # every step + the final pass
        {"sample_index": 1, "row_forwards": {"heavy": 4, "light": 1}},  # cache hits, no final pass
    ])
    baseline = _write_samples(tmp_path / "h.jsonl", [
        {"row_forwards": {"heavy": 9}}, {"row_forwards": {"heavy": 7}}], schedule="all-heavy")
    profile = load_profile("tiny")
    r = flops.flops_report(profile, SANDWICH, samples=samples, baseline_samples=baseline, measure=False)
    H = flops.analytic_macs(model_config(profile, "heavy", 8192)).total
    L = flops.analytic_macs(model_config(profile, "light", 8192)).total
    eff = r["accountings"]["effective"]
    assert r["steps"] == 8 and r["steps_per_model"] == {"heavy": 6, "light": 2}
    assert eff["row_forwards"] == {"heavy": 10, "light": 4} and eff["rows"] == 2
    assert eff["macs"] == 10 * H + 4 * L
    assert eff["all_heavy_macs"] == 2 * (8 + 1) * H  # rows x (T + final pass) all-heavy forwards
    assert r["effective_saving"] == pytest.approx(1 - (10 * H + 4 * L) / (18 * H))
    assert r["effective_saving_vs_baseline"] == pytest.approx(1 - (10 * H + 4 * L) / 2 / (16 * H / 2))
    # nominal accountings are unaffected by the samples: T = 8 steps, final pass excluded
    assert r["full_saving"] == pytest.approx(1 - (6 * H + 2 * L) / (8 * H))


def test_effective_accounting_of_an_all_heavy_ddpm_run_is_zero(tmp_path):
    samples = _write_samples(tmp_path / "h.jsonl", [{"row_forwards": {"heavy": 9}}] * 3, schedule="all-heavy")
    r = flops.flops_report(load_profile("tiny"), ALL_HEAVY, samples=samples, measure=False)
    assert r["effective_saving"] == 0.0 and r["full_saving"] == 0.0 and r["blocks_only_saving"] == 0.0


@pytest.mark.parametrize("drop", ["row_forwards", "steps", "schedule", "noise_removal"])
def test_samples_missing_field_is_user_error(tmp_path, drop):
    row = {"schedule": "sandwich", "steps": 8, "noise_removal": True, "row_forwards": {"heavy": 6, "light": 3}}
    del row[drop]
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=f"s.jsonl:1: missing field '{drop}'"):
        flops.flops_report(load_profile("tiny"), SANDWICH, samples=path, measure=False)


@pytest.mark.parametrize("content, match", [
    ("", "no samples"),
    ("{not json\n", "not JSON"),
    ('{"schedule": "sandwich", "steps": "8", "noise_removal": true, "row_forwards": {}}\n', "'steps' is str"),
    ('{"schedule": "sandwich", "steps": 8, "noise_removal": true, "row_forwards": {"heavy": -1}}\n',
     "count >= 0"),
    ('{"schedule": "sandwich", "steps": 8, "noise_removal": true, "row_forwards": {"medium": 3}}\n',
     "model\\(s\\) medium"),
    ('{"schedule": "all-heavy", "steps": 8, "noise_removal": true, "row_forwards": {"heavy": 9}}\n',
     "sampled with schedule 'all-heavy'"),
])
def test_bad_samples_are_user_errors(tmp_path, content, match):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        flops.flops_report(load_profile("tiny"), SANDWICH, samples=path, measure=False)


def test_baseline_samples_need_samples(tmp_path):
    baseline = _write_samples(tmp_path / "h.jsonl", [{"row_forwards": {"heavy": 9}}], schedule="all-heavy")
    with pytest.raises(UserError, match="--baseline-samples needs --samples"):
        flops.flops_report(load_profile("tiny"), SANDWICH, baseline_samples=baseline, measure=False)


def test_missing_samples_file_and_steps_mismatch(tmp_path):
    with pytest.raises(UserError, match="samples file not found"):
        flops.flops_report(load_profile("tiny"), SANDWICH, samples=tmp_path / "none.jsonl", measure=False)
    samples = _write_samples(tmp_path / "s.jsonl", [{"row_forwards": {"heavy": 6, "light": 3}}])
    with pytest.raises(UserError, match="sampled with 8 steps, but --steps is 16"):
        flops.flops_report(load_profile("tiny"), SANDWICH, samples=samples, steps=16, measure=False)


def test_samples_of_the_real_sampler(tmp_path):
    """The effective accounting reads what `mdlm.sampler` writes (random-init smoke-size models)."""
    import torch

    from mdlm import sampler
    from mdlm.model import MDLM
    from mdlm.schedule import load_schedule

    profile = load_profile("smoke")
    schedule = load_schedule(SANDWICH, 16)
    torch.manual_seed(0)
    models = {w: MDLM(model_config(profile, w, 8192)).eval() for w in ("heavy", "light")}
    config = sampler.SamplerConfig(predictor="ddpm")
    result = sampler.sample({w: m for w, m in models.items()}, schedule, mask_id=1, seq_len=32,
                            sample_indices=range(3), seed=0, config=config)
    records = [sampler.sample_record(result, k, "", schedule, 0, config) for k in range(3)]
    out = tmp_path / "sandwich.jsonl"
    sampler.write_samples(out, records, sampler.run_meta(result, schedule, 0, config))
    r = flops.flops_report(profile, SANDWICH, samples=out, measure=False)
    eff = r["accountings"]["effective"]
    # ddpm: every row at every step, plus the final pass by the last step's (light) model
    assert eff["row_forwards"] == {"heavy": 3 * 12, "light": 3 * (4 + 1)}
    assert eff["calls"] == {"heavy": 12, "light": 5}
    H, L = (flops.analytic_macs(model_config(profile, w, 8192)).total for w in ("heavy", "light"))
    assert r["effective_saving"] == pytest.approx(1 - (12 * H + 5 * L) / (17 * H))
