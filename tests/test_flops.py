"""FLOP accounting: hand-computed counts, fvcore vs analytic (with and without `select`), the paper's 16.7%,
the effective and executed accountings of sampled runs, and bad input."""

from __future__ import annotations

import json
import re
import warnings
from pathlib import Path

import pytest

from mdlm import flops, fvcore_count
from mdlm.errors import UserError
from mdlm.flops import SampledRun
from mdlm.model import DiTConfig, model_config
from mdlm.profiles import load_profile
from mdlm.run_counts import read_sampled_run, run_counts_from_meta
from mdlm.schedule import load_schedule

ROOT = Path(__file__).resolve().parents[1]
SANDWICH = ROOT / "schedules" / "sandwich.yaml"
ALL_HEAVY = ROOT / "schedules" / "all-heavy.yaml"

# d = 32, 2 heads, cond 16, 3 blocks (light: 1), MLP ratio 4, L = 8, V = 100
SMALL = DiTConfig(vocab_size=100, hidden_size=32, n_blocks=3, n_heads=2, cond_dim=16, length=8, dropout=0.0)
SMALL_LIGHT = DiTConfig(vocab_size=100, hidden_size=32, n_blocks=1, n_heads=2, cond_dim=16, length=8, dropout=0.0)


@pytest.fixture(autouse=True)
def _project_root(monkeypatch):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))


def _configs(profile_name: str) -> dict[str, DiTConfig]:
    p = load_profile(profile_name)
    return flops.model_configs(p.model, p.tokenizer, p.data.seq_len, ["heavy", "light"])


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
    # the head at 3 positions of a batch of 2: 3 * 32*100; blocks and conditioning still per row
    sel = flops.analytic_macs(SMALL, batch=2, head_positions=3)
    assert (sel.blocks, sel.head, sel.other) == (2 * 307200, 3 * 3200, 2 * 14592)


def test_fvcore_small_config_by_hand_counts_sdpa():
    m = flops.fvcore_macs(SMALL)
    # MACs only: the same numbers as the hand count above (LayerNorm is not counted)
    assert (m.blocks, m.head, m.other) == (307200, 25600, 14592)
    # without the SDPA handle fvcore would miss the 3 * 4096 attention MACs and list the op as unsupported
    assert fvcore_count.SDPA_OP not in flops.fvcore_uncounted_ops(SMALL)
    assert flops.fvcore_macs(SMALL, batch=2).total == 2 * m.total
    sel = flops.fvcore_macs(SMALL, batch=2, selected=3)  # a traced `select` forward
    assert (sel.blocks, sel.head, sel.other) == (2 * 307200, 3 * 3200, 2 * 14592)


@pytest.mark.parametrize("profile_name", ["smoke", "tiny"])
@pytest.mark.parametrize("which", ["heavy", "light"])
@pytest.mark.parametrize("batch, selected", [(1, None), (1, 1), (4, 5), (3, 40)])
def test_fvcore_select_forward_agrees_with_blocks_plus_n_heads(profile_name, which, batch, selected):
    cfg = _configs(profile_name)[which]
    f = flops.fvcore_macs(cfg, batch=batch, selected=selected)
    positions = batch * cfg.length if selected is None else selected
    per_row = flops.analytic_macs(cfg, head_positions=0).total  # blocks + conditioning
    expected = batch * per_row + positions * cfg.hidden_size * cfg.vocab_size
    assert abs(f.total / expected - 1) < 0.01
    assert abs(f.head / (positions * cfg.hidden_size * cfg.vocab_size) - 1) < 0.01


def test_owt_sandwich_acceptance():
    p = load_profile("owt")
    configs = flops.model_configs(p.model, p.tokenizer, p.data.seq_len, ["heavy", "light"])
    r = flops.schedule_report(configs, load_schedule(SANDWICH, 1000), measure=False)
    assert r["steps_per_model"] == {"heavy": 750, "light": 250}
    assert round(r["blocks_only_saving"], 4) == 0.1667
    assert abs(r["full_saving"] - 0.121) < 0.001  # 0.1215: (250/1000) * (1 - 149.9/291.7)
    heavy = r["models"]["heavy"]["analytic"]["flops"]
    light = r["models"]["light"]["analytic"]["flops"]
    # worked by hand for the small DiT on 1024 tokens: 212.60 / 70.87 GFLOPs of blocks, head 79.05, totals 291.6 / 149.9
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


def _run(rows: int, row_forwards: dict, head_positions: dict | None, path: str = "run") -> SampledRun:
    return SampledRun(path=path, rows=rows, steps=8, noise_removal=True, row_forwards=row_forwards,
                      head_positions=head_positions)


def test_executed_accounting_by_hand():
    configs = {"heavy": SMALL, "light": SMALL_LIGHT}
    # per row-forward (blocks + conditioning), from the layer shapes:
    #   heavy: 3 blocks * 102400 + adaLN 3*16*192 + final adaLN 16*64 + time MLP 256*16 + 16*16 = 321792
    #   light: 1 block  * 102400 + adaLN 1*16*192 + 1024 + 4352                                 = 110848
    # per head position: [32] x [32, 100] = 3200 (both models)
    run = _run(2, {"heavy": 10, "light": 4}, {"heavy": 12, "light": 5})
    heavy, light = 10 * 321792 + 12 * 3200, 4 * 110848 + 5 * 3200  # 3256320, 459392
    base = _run(2, {"heavy": 14}, {"heavy": 16}, "base")  # all-heavy: 14 row-forwards, every position once
    base_macs = 14 * 321792 + 16 * 3200  # 4556288
    e = flops.executed_accounting(run, configs, baseline=base)
    assert e["macs_by_model"] == {"heavy": heavy, "light": light} == {"heavy": 3256320, "light": 459392}
    assert e["macs"] == heavy + light and e["flops"] == 2 * (heavy + light)
    assert base_macs == 4556288 and e["baseline"]["macs"] == base_macs
    assert e["saving"] == pytest.approx(1 - (3256320 + 459392) / 4556288)  # 0.18448...
    assert e["head_positions_source"] == flops.HEAD_RECORDED
    # a baseline with twice the rows is compared per sequence
    double = _run(4, {"heavy": 28}, {"heavy": 32}, "base2")
    assert flops.executed_accounting(run, configs, baseline=double)["saving"] == pytest.approx(e["saving"])


def test_executed_accounting_counts_the_conditioning_where_it_ran():
    configs = {"heavy": SMALL, "light": SMALL_LIGHT}
    run = _run(2, {"heavy": 10, "light": 4}, {"heavy": 12, "light": 5})
    # the conditioning of one row-forward: heavy adaLN 3*16*192 + final 16*64 + time MLP 256*16 + 16*16 = 14592,
    # light 1*16*192 + 1024 + 4352 = 8448; recorded for no heavy row and for 3 of the 4 light ones
    run.conditioning_rows = {"heavy": 0, "light": 3}
    assert flops.executed_accounting(run, configs)["macs_by_model"] == {"heavy": 3256320 - 10 * 14592,
                                                                       "light": 459392 - 1 * 8448}
    run.conditioning_rows = {"heavy": 11}
    with pytest.raises(UserError, match="11 conditioning rows of model 'heavy' exceed its 10 row-forwards"):
        flops.executed_accounting(run, configs)


def test_executed_accounting_counts_the_last_block_where_it_ran():
    configs = {"heavy": SMALL, "light": SMALL_LIGHT}
    run = _run(2, {"heavy": 10, "light": 4}, {"heavy": 12, "light": 5})
    run.last_block_positions = {"heavy": 15, "light": 8}
    # the last block's per-position part, d 32, L 8, MLP ratio 4: q and out 2*32^2 + MLP 8*32^2 = 10240, QK^T and
    # PV 2*8*32 = 512 -> 10752 MACs; not computed at 10*8 - 15 = 65 heavy and 4*8 - 8 = 24 light positions
    assert flops.last_block_macs_per_position(SMALL) == 10752
    macs = flops.executed_accounting(run, configs)["macs_by_model"]
    assert macs == {"heavy": 3256320 - 65 * 10752, "light": 459392 - 24 * 10752}
    run.last_block_positions = {"heavy": 80, "light": 32}  # every position: the module's forward
    assert flops.executed_accounting(run, configs)["macs_by_model"] == {"heavy": 3256320, "light": 459392}
    run.last_block_positions = {"heavy": 81}
    with pytest.raises(UserError, match="81 last-block positions of model 'heavy' exceed its 10 row-forwards"):
        flops.executed_accounting(run, configs)


@pytest.mark.parametrize("rows, pos", [([0, 1, 2, 3], [7, 0, 3, 3]), ([0, 0, 1, 3, 3, 3], [1, 5, 2, 0, 7, 3]),
                                       ([2, 2, 2, 2, 2, 2, 2, 2], list(range(8)))])
def test_fvcore_on_the_folded_forward_agrees_with_the_executed_count(rows, pos):
    """fvcore traces the forward the sampler runs (`FoldedDiT` with selected positions: the last block padded
    per row) and counts exactly the executed MACs of that call: the conditioning, which the folded forward
    computed once at construction, is in neither (a record without `conditioning_rows` counts it per row).

    Traced on the fallback path (torch's GEMMs, the GELU as passes): the TorchScript tracer fvcore uses cannot
    record oneDNN's linear (a `Scalar?[]` argument). oneDNN runs the same [M, K] x [K, N] GEMMs, the GELU
    applied to fc1's output, which `tests/test_folded.py` checks against the fallback."""
    import torch
    from fvcore.nn import FlopCountAnalysis
    from fvcore.nn.jit_handles import addmm_flop_jit

    from mdlm.folded import FoldedDiT
    from mdlm.model import MDLM

    torch.manual_seed(0)
    folded = FoldedDiT(MDLM(SMALL).eval())
    folded.onednn = False

    class Traced(torch.nn.Module):
        def forward(self, ids, rows, pos):
            return folded(ids, rows, pos)

    ids = torch.randint(0, SMALL.vocab_size - 1, (4, SMALL.length))
    rows_t, pos_t = torch.tensor(rows), torch.tensor(pos)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fca = FlopCountAnalysis(Traced(), (ids, rows_t, pos_t))
        fca.set_op_handle(fvcore_count.SDPA_OP, fvcore_count._sdpa_macs, fvcore_count.LAYER_NORM_OP,
                          fvcore_count._no_macs,
                          # the residual GEMMs run in place; fvcore's addmm formula reads the same arguments
                          "aten::addmm_", addmm_flop_jit)
        fca.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        traced = fca.total()
    assert fca.by_operator()["addmm_"] > 0
    run = _run(1, {"heavy": 4}, {"heavy": len(rows)})
    run.last_block_positions = {"heavy": FoldedDiT.last_block_positions(rows_t, 4)}
    assert run.last_block_positions["heavy"] == 4 * max(rows.count(r) for r in range(4))  # padded per row
    per_row_conditioning = flops.executed_accounting(run, {"heavy": SMALL})["macs"]  # a record without the tally
    run.conditioning_rows = {"heavy": 0}  # what the sampler records for the folded forward
    executed = flops.executed_accounting(run, {"heavy": SMALL})["macs"]
    assert traced == executed == per_row_conditioning - 4 * flops.analytic_macs(SMALL).other


def test_executed_accounting_without_head_positions_assumes_the_full_head():
    configs = {"heavy": SMALL, "light": SMALL_LIGHT}
    e = flops.executed_accounting(_run(2, {"heavy": 10, "light": 4}, None), configs)
    # every position (L = 8) of every row-forward: 10 * (321792 + 8*3200) + 4 * (110848 + 8*3200)
    assert e["macs"] == 10 * 347392 + 4 * 136448
    assert e["head_positions_source"] == flops.HEAD_ASSUMED and e["saving"] is None


@pytest.mark.parametrize("heads, match", [
    ({"heavy": 81}, "81 head positions of model 'heavy' exceed its 10 row-forwards x 8 positions"),
    ({"heavy": 5, "medium": 1}, "head positions of model\\(s\\) medium without row-forwards"),
])
def test_executed_accounting_rejects_impossible_head_counts(heads, match):
    with pytest.raises(UserError, match=match):
        flops.executed_accounting(_run(2, {"heavy": 10}, heads), {"heavy": SMALL})


def _write_samples(path: Path, rows: list[dict], schedule: str = "sandwich", steps: int = 8,
                   meta: dict | None = None) -> Path:
    """A samples file and its run record (default: the row-forward totals of the lines, no head counts)."""
    base = {"schedule": schedule, "steps": steps, "noise_removal": True}
    path.write_text("".join(json.dumps({**base, **r}) + "\n" for r in rows))
    if meta is None:
        totals: dict[str, int] = {}
        for r in rows:
            for m, n in r["row_forwards"].items():
                totals[m] = totals.get(m, 0) + n
        meta = {"calls": {m: 1 for m in totals}, "row_forwards": totals}
    path.with_suffix(".meta.json").write_text(json.dumps(meta))
    return path


def _cli(args: list[str]) -> int:
    from mdlm.cli import main

    return main(["flops", "--profile", "tiny", *args])


def test_cli_writes_json_atomically(tmp_path, capsys):
    out = tmp_path / "sub" / "flops.json"
    assert _cli(["--schedule", "sandwich", "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads(out.read_text())
    assert printed == written
    assert written["profile"] == "tiny" and written["steps_per_model"] == {"heavy": 750, "light": 250}
    assert round(written["blocks_only_saving"], 4) == 0.1667
    assert written["models"]["heavy"]["fvcore_over_analytic"] == 1.0
    assert [p.name for p in out.parent.iterdir()] == ["flops.json"]  # no temp file left behind


def test_cli_reports_user_error(tmp_path, capsys):
    assert _cli(["--schedule", str(tmp_path / "nope.yaml")]) == 2
    err = capsys.readouterr().err
    assert "nope.yaml" in err and len(err.strip().splitlines()) == 1


def test_effective_and_executed_accounting_from_samples(tmp_path, capsys):
    # T = 8: the sandwich is L1, H6, L1; the final pass is a 9th forward (by the light model)
    rows = [{"sample_index": 0, "row_forwards": {"heavy": 6, "light": 3}},  # every step + the final pass
            {"sample_index": 1, "row_forwards": {"heavy": 4, "light": 1}}]  # cache hits, no final pass
    meta = {"calls": {"heavy": 6, "light": 3}, "row_forwards": {"heavy": 10, "light": 4},
            "head_positions": {"heavy": 200, "light": 56}}
    samples = _write_samples(tmp_path / "s.jsonl", rows, meta=meta)
    baseline = _write_samples(tmp_path / "h.jsonl", [{"row_forwards": {"heavy": 9}}, {"row_forwards": {"heavy": 7}}],
                              schedule="all-heavy", meta={"per_model": {"heavy": {
                                  "calls": 9, "row_forwards": 16, "head_positions": 256}}})
    out = tmp_path / "r.json"
    assert _cli(["--schedule", str(SANDWICH), "--samples", str(samples), "--baseline-samples", str(baseline),
                 "--no-measure", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    H, L = (flops.analytic_macs(c).total for c in (_configs("tiny")["heavy"], _configs("tiny")["light"]))
    eff = r["accountings"]["effective"]
    assert r["steps"] == 8 and r["steps_per_model"] == {"heavy": 6, "light": 2}
    assert eff["row_forwards"] == {"heavy": 10, "light": 4} and eff["rows"] == 2
    assert eff["macs"] == 10 * H + 4 * L
    assert eff["all_heavy_macs"] == 2 * (8 + 1) * H  # rows x (T + final pass) all-heavy forwards
    assert r["effective_saving"] == pytest.approx(1 - (10 * H + 4 * L) / (18 * H))
    assert r["effective_saving_vs_baseline"] == pytest.approx(1 - (10 * H + 4 * L) / 2 / (16 * H / 2))
    # executed: tiny d 128, V 8192 -> 1048576 MACs per head position; row costs = full cost - 128 positions
    hp = 128 * 8192
    rh, rl = H - 128 * hp, L - 128 * hp
    executed = 10 * rh + 4 * rl + (200 + 56) * hp
    assert r["accountings"]["executed"]["macs"] == executed
    assert r["executed_saving"] == pytest.approx(1 - executed / (16 * rh + 256 * hp))
    assert r["head_positions_source"] == flops.HEAD_RECORDED
    # nominal accountings are unaffected by the samples: T = 8 steps, final pass excluded
    assert r["full_saving"] == pytest.approx(1 - (6 * H + 2 * L) / (8 * H))
    assert "executed" in capsys.readouterr().out


def test_effective_accounting_of_an_all_heavy_ddpm_run_is_zero(tmp_path):
    samples = _write_samples(tmp_path / "h.jsonl", [{"row_forwards": {"heavy": 9}}] * 3, schedule="all-heavy")
    out = tmp_path / "r.json"
    assert _cli(["--schedule", str(ALL_HEAVY), "--samples", str(samples), "--baseline-samples", str(samples),
                 "--no-measure", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["effective_saving"] == 0.0 and r["full_saving"] == 0.0 and r["blocks_only_saving"] == 0.0
    assert r["executed_saving"] == 0.0 and r["head_positions_source"] == flops.HEAD_ASSUMED


@pytest.mark.parametrize("drop", ["row_forwards", "steps", "schedule", "noise_removal"])
def test_samples_missing_field_is_user_error(tmp_path, drop):
    row = {"schedule": "sandwich", "steps": 8, "noise_removal": True, "row_forwards": {"heavy": 6, "light": 3}}
    del row[drop]
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(row) + "\n")
    with pytest.raises(UserError, match=f"s.jsonl:1: missing field '{drop}'"):
        read_sampled_run(path)


@pytest.mark.parametrize("content, match", [
    ("", "no samples"),
    ("{not json\n", "not JSON"),
    ('{"schedule": "sandwich", "steps": "8", "noise_removal": true, "row_forwards": {}}\n', "'steps' is str"),
    ('{"schedule": "sandwich", "steps": 8, "noise_removal": true, "row_forwards": {"heavy": -1}}\n',
     "count >= 0"),
])
def test_bad_samples_are_user_errors(tmp_path, content, match):
    path = tmp_path / "s.jsonl"
    path.write_text(content)
    with pytest.raises(UserError, match=match):
        read_sampled_run(path)


@pytest.mark.parametrize("meta, match", [
    (None, "s.meta.json: missing"),
    ("[1, 2]", "expected a JSON object"),
    ("{oops", "unreadable run record"),
    ({"row_forwards": {"heavy": 7, "light": 3}}, "do not match the samples"),
    ({"row_forwards": {"heavy": 6, "light": 3}, "head_positions": [5]}, "head_positions is list"),
    ({"row_forwards": {"heavy": 6, "light": 3}, "head_positions": {"heavy": 1.5}}, "expected a count"),
    ({"row_forwards": {"heavy": 6, "light": 3}, "head_positions": {"heavy": 5, "light": 3},
      "per_model": {"heavy": {"row_forwards": 6, "head_positions": 4}, "light": {"row_forwards": 3,
                                                                                "head_positions": 3}}},
     "disagrees with per_model's"),
    ({"row_forwards": {"heavy": 6, "light": 3}, "per_model": [1]}, "per_model is not a"),
])
def test_bad_run_records_are_user_errors(tmp_path, meta, match):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps({"schedule": "sandwich", "steps": 8, "noise_removal": True,
                                "row_forwards": {"heavy": 6, "light": 3}}) + "\n")
    if meta is not None:
        path.with_suffix(".meta.json").write_text(meta if isinstance(meta, str) else json.dumps(meta))
    with pytest.raises(UserError, match=match):
        read_sampled_run(path)


def test_run_record_layouts():
    flat = {"calls": {"heavy": 2}, "row_forwards": {"heavy": 5}, "head_positions": {"heavy": 9}}
    nested = {"per_model": {"heavy": {"calls": 2, "row_forwards": 5, "head_positions": 9}}, "seed": 0}
    old = {"calls": {"heavy": 2}, "row_forwards": {"heavy": 5}}
    expected = {"calls": {"heavy": 2}, "row_forwards": {"heavy": 5}, "head_positions": {"heavy": 9},
                "last_block_positions": None, "conditioning_rows": None}
    assert run_counts_from_meta(flat, "m") == expected
    assert run_counts_from_meta(nested, "m") == expected
    assert run_counts_from_meta({**old, **nested}, "m") == expected
    assert run_counts_from_meta(old, "m")["head_positions"] is None
    nested["per_model"]["heavy"]["last_block_positions"] = 40
    assert run_counts_from_meta(nested, "m")["last_block_positions"] == {"heavy": 40}
    nested["per_model"]["heavy"]["conditioning_rows"] = 0
    assert run_counts_from_meta(nested, "m")["conditioning_rows"] == {"heavy": 0}


@pytest.mark.parametrize("args, match", [
    (["--baseline-samples", "x.jsonl"], "--baseline-samples needs --samples"),
    (["--samples", "{d}/none.jsonl"], "samples file not found"),
    (["--samples", "{d}/s.jsonl", "--steps", "16"], "sampled with 8 steps, but --steps is 16"),
    (["--samples", "{d}/h.jsonl"], "sampled with schedule 'all-heavy'"),
    (["--samples", "{d}/l.jsonl"], "model\\(s\\) medium"),
])
def test_cli_bad_input(tmp_path, capsys, args, match):
    _write_samples(tmp_path / "s.jsonl", [{"row_forwards": {"heavy": 6, "light": 3}}])
    _write_samples(tmp_path / "h.jsonl", [{"row_forwards": {"heavy": 9}}], schedule="all-heavy")
    _write_samples(tmp_path / "l.jsonl", [{"row_forwards": {"medium": 9}}])
    assert _cli(["--schedule", str(SANDWICH), "--no-measure", *[a.format(d=tmp_path) for a in args]]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert re.search(match, err), err


def test_samples_of_the_real_sampler(tmp_path):
    """The accountings read what `mdlm.sampler` writes (random-init smoke-size models)."""
    import torch

    from mdlm import sample_runs, sampler
    from mdlm.model import MDLM

    p = load_profile("smoke")
    schedule = load_schedule(SANDWICH, 16)
    torch.manual_seed(0)
    configs = {w: model_config(p.model, w, 8192, p.data.seq_len) for w in ("heavy", "light")}
    denoisers = {w: sampler.denoiser_from_model(MDLM(c).eval()) for w, c in configs.items()}
    config = sampler.SamplerConfig(predictor="ddpm")
    result = sampler.sample(denoisers, schedule, mask_id=1, seq_len=32, sample_indices=range(3), seed=0,
                            config=config)
    records = [sample_runs.sample_record(result, k, "", schedule, 0, config) for k in range(3)]
    out = tmp_path / "sandwich.jsonl"
    sample_runs.write_samples(out, records, sample_runs.run_meta(result, schedule, 0, config))
    run = read_sampled_run(out)
    r = flops.schedule_report(configs, schedule, run, measure=False)
    eff = r["accountings"]["effective"]
    # ddpm: every row at every step, plus the final pass by the last step's (light) model
    assert eff["row_forwards"] == {"heavy": 3 * 12, "light": 3 * (4 + 1)}
    assert eff["calls"] == {"heavy": 12, "light": 5}
    H, L = (flops.analytic_macs(configs[w]).total for w in ("heavy", "light"))
    assert r["effective_saving"] == pytest.approx(1 - (12 * H + 5 * L) / (17 * H))
    if run.head_positions is not None:  # samplers that record them compute each of the 3 x 32 positions once
        assert sum(run.head_positions.values()) >= 3 * 32
