"""Tests of mdlm.evaluate with a tiny random Llama judge and a tiny byte-level BPE trained here."""

from __future__ import annotations

import functools
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mdlm import cli, judge_cache
from mdlm import evaluate as ev
from mdlm import judge as jd
from mdlm import stats as st
from mdlm.errors import UserError
from mdlm.io import sha256_file

EOT = "<|endoftext|>"
CORPUS = [
    "The cat sat on the mat. The dog sat on the log.",
    "Markets fell sharply on Monday as investors worried about rates.",
    "A masked diffusion model unmasks tokens step by step.",
    "She said the results were better than expected, and the team agreed.",
] * 20
TEXTS = [
    "The cat sat.",
    "Markets fell on Monday as the dog sat on the mat and investors worried.",
    "A",
    "model unmasks tokens step by step, she said",
    "The team agreed. The results were better than expected.",
    "on the log",
    "Investors worried about the cat.",
]
CONTEXT = 48  # the tiny judge's max_position_embeddings: small, so that truncation is testable


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    folder = tmp_path_factory.mktemp("tiny_judge")
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=[EOT],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    backend.train_from_iterator(CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=EOT, eos_token=EOT)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                         initializer_range=0.3, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def judge(judge_dir) -> jd.Judge:
    return jd.load_judge(str(judge_dir))


@functools.cache
def reference_model(judge_dir: Path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(judge_dir, dtype=torch.float32).eval()


def reference_nll(judge_dir: Path, ids: list[int]) -> np.ndarray:
    """Per-position NLL of ids[1:] given ids[:-1], from a separately loaded copy of the model, in float64."""
    model = reference_model(judge_dir)
    with torch.no_grad():
        logits = model(torch.tensor([ids]), use_cache=False).logits[0].double()  # [T, V]
    logp = torch.log_softmax(logits[:-1], dim=-1)
    return -logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()


# ---- judge loading ----------------------------------------------------------------------------------------

def test_judge_identity_and_settings(judge, judge_dir):
    assert judge.sha256 == sha256_file(judge_dir / "model.safetensors")
    assert judge.bos_id == judge.tokenizer.get_vocab()[EOT] == 0
    assert judge.max_length == CONTEXT
    assert not judge.model.training and judge.model.dtype == torch.float32
    assert jd.load_judge(str(judge_dir)) is judge  # loaded once per process


def test_missing_judge_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="nope"):
        jd.load_judge(str(tmp_path / "nope"))


def test_folder_without_safetensors_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="safetensors"):
        jd.load_judge(str(tmp_path))


def test_hub_judge_offline_is_a_user_error(monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="gpt2-large.*offline"):
        jd.load_judge("gpt2-large")


def test_missing_gguf_asset_is_a_user_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    with pytest.raises(UserError, match="GGUF"):
        jd.load_judge("smollm2-135m")


def test_gguf_judge_cache_is_built_once_and_rebuilt_when_stale(tmp_path, monkeypatch, judge_dir):
    gguf = tmp_path / "data/assets/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(b"v1")
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    builds = []

    def fake_build(gguf_path, gguf_sha, name, cache):  # the tiny judge stands in for the dequantized GGUF
        builds.append(gguf_sha)
        tmp = cache.parent / ".building"
        shutil.copytree(judge_dir, tmp)
        (tmp / judge_cache.CACHE_MARKER).write_text(json.dumps({"gguf_sha256": gguf_sha}))
        judge_cache.replace_dir(tmp, cache)

    monkeypatch.setattr(judge_cache, "build_gguf_cache", fake_build)
    monkeypatch.setattr(jd, "_JUDGES", {})
    first = jd.load_judge("smollm2-135m")
    assert first.sha256 == sha256_file(gguf) and len(builds) == 1
    assert jd.load_judge("smollm2-135m") is first
    monkeypatch.setattr(jd, "_JUDGES", {})
    jd.load_judge("smollm2-135m")  # a new process: reads the cache
    assert len(builds) == 1
    gguf.write_bytes(b"v2")  # another GGUF: the cache is stale
    monkeypatch.setattr(jd, "_JUDGES", {})
    assert jd.load_judge("smollm2-135m").sha256 == sha256_file(gguf) and len(builds) == 2
    (tmp_path / "data/judge/smollm2-135m/model.safetensors").write_bytes(b"damaged")
    monkeypatch.setattr(jd, "_JUDGES", {})
    jd.load_judge("smollm2-135m")
    assert len(builds) == 3
    assert sorted(p.name for p in (tmp_path / "data/judge").iterdir()) == ["smollm2-135m"]  # no leftovers


# ---- retokenization and the EOS rule ---------------------------------------------------------------------

def test_eos_rule_ids_and_weights(judge):
    enc = lambda s: judge.tokenizer.encode(s, add_special_tokens=False)  # noqa: E731
    a, b = enc("The cat"), enc(" sat.")
    got = jd.encode_for_judge(judge, f"{EOT}{EOT}The cat{EOT} sat.{EOT}{EOT}")
    # leading markers dropped; BOS; text; first EOS counts; text after it counts; later EOS are context only
    assert got.ids == [0] + a + [0] + b + [0, 0]
    assert got.weights == [0] + [1] * len(a) + [1] + [1] * len(b) + [0, 0]
    assert not got.truncated
    assert jd.encode_for_judge(judge, f"{EOT}The cat") == jd.encode_for_judge(judge, "The cat")


def test_special_strings_in_text_are_plain_text(judge):
    got = jd.encode_for_judge(judge, f"a [SEP] b {EOT} c", eos_text="[SEP]", bos_text="[CLS]")
    assert got.ids.count(0) == 2  # the BOS and the [SEP] separator; the literal <|endoftext|> is text
    assert got.weights[got.ids.index(0, 1)] == 1
    assert jd.encode_for_judge(judge, "[CLS] x", eos_text="[SEP]", bos_text="[CLS]").ids == \
        jd.encode_for_judge(judge, " x", eos_text="[SEP]").ids


def test_weighted_nll_excludes_eos_padding(judge, judge_dir):
    text = f"{EOT}The cat sat.{EOT}on the log{EOT}{EOT}{EOT}"
    e = jd.encode_for_judge(judge, text)
    nll = reference_nll(judge_dir, e.ids)
    weights = np.array(e.weights[1:], dtype=np.float64)
    scores = jd.score_samples(judge, [text])
    n_text = len(judge.tokenizer.encode("The cat sat.on the log", add_special_tokens=False))
    assert scores.n_tokens[0] == weights.sum() == len(e.ids) - 4  # all but BOS and the 3 EOS after the first
    assert n_text - 1 <= scores.n_tokens[0] - 1 <= n_text + 1  # text tokens (+/- a merge at the seam) + one EOS
    np.testing.assert_allclose(scores.nll_sum[0], (nll * weights).sum(), rtol=1e-5)


def test_truncation_to_judge_context(judge):
    long = " ".join(["The cat sat on the mat."] * 40)
    e = jd.encode_for_judge(judge, long)
    assert e.truncated and len(e.ids) == len(e.weights) == CONTEXT
    assert jd.score_samples(judge, [long]).n_tokens[0] == CONTEXT - 1


@pytest.mark.parametrize("text", ["", EOT, f"{EOT}{EOT}{EOT}"])
def test_sample_without_scored_tokens_is_an_error(judge, text):
    with pytest.raises(UserError, match="f.jsonl: sample_index 1"):
        jd.score_samples(judge, ["ok", text], labels=["f.jsonl: sample_index 0", "f.jsonl: sample_index 1"])


# ---- perplexity -------------------------------------------------------------------------------------------

def test_gen_ppl_matches_hand_computation(judge, judge_dir):
    total_nll, total_tokens = 0.0, 0
    scores = jd.score_samples(judge, TEXTS, batch_size=3)
    for i, text in enumerate(TEXTS):
        ids = [0] + judge.tokenizer.encode(text, add_special_tokens=False)
        nll = reference_nll(judge_dir, ids)
        assert scores.n_tokens[i] == len(ids) - 1
        np.testing.assert_allclose(scores.nll_sum[i], nll.sum(), rtol=1e-5)
        total_nll, total_tokens = total_nll + nll.sum(), total_tokens + len(ids) - 1
    assert scores.nll_sum.dtype == np.float64
    # corpus-level, token-weighted: not the mean of per-sample perplexities
    assert jd.gen_ppl(*scores) == pytest.approx(math.exp(total_nll / total_tokens), rel=1e-5)
    assert jd.gen_ppl(*scores) != pytest.approx(np.mean(np.exp(scores.nll_sum / scores.n_tokens)), rel=1e-3)


@pytest.mark.parametrize("batch_size", [1, 2, 3, 4, 6, 7, 8, 100])
def test_no_sample_dropped_for_any_batch_size(judge, batch_size):
    reference = jd.score_samples(judge, TEXTS, batch_size=1)
    scores = jd.score_samples(judge, TEXTS, batch_size=batch_size)
    assert len(scores.nll_sum) == len(TEXTS) and np.all(scores.nll_sum > 0)
    np.testing.assert_array_equal(scores.n_tokens, reference.n_tokens)
    np.testing.assert_allclose(scores.nll_sum, reference.nll_sum, rtol=1e-6)
    assert jd.gen_ppl(*scores) == pytest.approx(jd.gen_ppl(*reference), rel=1e-6)


def test_scores_do_not_depend_on_order(judge):
    perm = [3, 0, 6, 1, 5, 2, 4]
    a = jd.score_samples(judge, TEXTS, batch_size=2)
    b = jd.score_samples(judge, [TEXTS[i] for i in perm], batch_size=2)
    np.testing.assert_allclose(b.nll_sum, a.nll_sum[perm], rtol=1e-6)


def test_bad_batch_size(judge):
    with pytest.raises(UserError, match="batch size"):
        jd.score_samples(judge, TEXTS, batch_size=0)


# ---- entropy ---------------------------------------------------------------------------------------------

def test_unigram_entropy_in_nats():
    assert math.copysign(1, jd.unigram_entropy([7] * 10)) == 1 and jd.unigram_entropy([7] * 10) == 0.0
    assert jd.unigram_entropy([1, 2, 1, 2]) == pytest.approx(math.log(2))
    assert jd.unigram_entropy(list(range(8)) * 3) == pytest.approx(math.log(8))
    assert jd.unigram_entropy([1, 1, 1, 2]) == pytest.approx(-(0.75 * math.log(0.75) + 0.25 * math.log(0.25)))


# ---- bootstrap --------------------------------------------------------------------------------------------

def test_bootstrap_point_and_determinism():
    rng = np.random.default_rng(1)
    v, w = rng.normal(3, 1, 50), rng.integers(5, 20, 50)
    ci = st.bootstrap_ci(v, w, B=300, seed=7)
    assert ci.point == pytest.approx(v.sum() / w.sum()) and ci.low < ci.point < ci.high
    assert st.bootstrap_ci(v, w, B=300, seed=7) == ci
    assert st.bootstrap_ci(v, w, B=300, seed=8) != ci
    assert st.bootstrap_ci(v, None, B=300, seed=7).point == pytest.approx(v.mean())


def test_bootstrap_mean_coverage_on_normal_data():
    rng = np.random.default_rng(0)
    trials, hits = 300, 0
    for trial in range(trials):
        ci = st.bootstrap_ci(rng.normal(5.0, 2.0, 40), None, B=400, seed=trial)
        hits += ci.low <= 5.0 <= ci.high
    assert 0.90 <= hits / trials <= 0.98


def test_bootstrap_ratio_coverage():
    # per-sample NLL sums of samples of varying length, true per-token NLL 3.0: the log gen-PPL estimator
    rng = np.random.default_rng(1)
    trials, hits = 300, 0
    for trial in range(trials):
        n_tokens = rng.integers(20, 200, 60)
        nll_sum = rng.normal(3.0 * n_tokens, 2.0 * np.sqrt(n_tokens))
        ci = st.bootstrap_ci(nll_sum, n_tokens, B=400, seed=trial)
        hits += ci.low <= 3.0 <= ci.high
    assert 0.90 <= hits / trials <= 0.98


def test_paired_identical_is_exactly_zero():
    rng = np.random.default_rng(2)
    nll, n = rng.normal(300, 30, 64), rng.integers(80, 120, 64)
    assert st.paired_ci(nll, n, nll.copy(), n.copy(), B=500, seed=0) == (0.0, 0.0, 0.0)
    ent = rng.normal(4, 0.1, 64)
    assert st.paired_ci(ent, None, ent.copy(), None, B=500, seed=0) == (0.0, 0.0, 0.0)


def test_paired_detects_a_known_shift_that_unpaired_cannot():
    # large between-sample spread, small consistent per-token shift of +0.05 nats
    rng = np.random.default_rng(3)
    n = rng.integers(80, 120, 64)
    base = n * rng.uniform(2.0, 5.0, 64)
    sched = base + n * (0.05 + rng.normal(0, 0.01, 64))
    d = st.paired_ci(sched, n, base, n, B=1000, seed=0)
    assert d.point == pytest.approx(sched.sum() / n.sum() - base.sum() / n.sum())
    assert 0.0 < d.low <= 0.05 <= d.high
    a, b = st.bootstrap_ci(sched, n, B=1000, seed=0), st.bootstrap_ci(base, n, B=1000, seed=0)
    assert a.low < b.high  # the unpaired intervals overlap


def test_align_pairs():
    keys = [(0, 2), (0, 0), (0, 1)]
    base = [(0, 0), (0, 1), (0, 2)]
    np.testing.assert_array_equal(st.align_pairs(keys, base), [2, 0, 1])
    with pytest.raises(UserError, match="do not pair"):
        st.align_pairs(keys, [(0, 0), (0, 1), (1, 2)])
    with pytest.raises(UserError, match="do not pair"):
        st.align_pairs(keys, base[:2])


# ---- samples files and the command -----------------------------------------------------------------------

def write_samples(path: Path, texts, schedule="all-light", seed=0, order=None) -> Path:
    order = order if order is not None else range(len(texts))
    rows = [{"text": texts[i], "token_ids": [i % 5, 3, 3, i], "sample_index": i, "seed": seed,
             "schedule": schedule, "extra": {"ignored": True}} for i in order]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def project(tmp_path, monkeypatch) -> Path:
    """A project root with a minimal params.yaml (profile `t`)."""
    import yaml

    params = yaml.safe_load((Path(__file__).resolve().parents[1] / "params.yaml").read_text(encoding="utf-8"))
    sections = dict(params["profiles"]["smoke"])  # a complete, valid profile; only `evaluate` matters here
    sections["evaluate"] = {"judge": "smollm2-135m", "batch_size": 3, "bootstrap": 200, "seed": 0}
    (tmp_path / "params.yaml").write_text(json.dumps({"profile": "t", "profiles": {"t": sections}}))
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    return tmp_path


def test_read_samples_errors(tmp_path):
    with pytest.raises(UserError, match="not found"):
        ev.read_samples(tmp_path / "missing.jsonl")
    cases = {
        "": "empty",
        "\n\n": "empty",
        '{"text": "a", "token_ids": [1], "sample_index": 0}\nnot json\n': r":2: not JSON",
        '{"token_ids": [1], "sample_index": 0}\n': "lacks text",
        '{"text": "a", "sample_index": 0}\n': "lacks token_ids",
        '{"text": "a", "token_ids": [1]}\n': "lacks sample_index",
        '{"text": "a", "token_ids": [], "sample_index": 0}\n': "token_ids",
        '[1, 2]\n': "JSON object",
        '{"text": "a", "token_ids": [1], "sample_index": 0}\n' * 2: "duplicate",
        '{"text": "a", "token_ids": [1], "sample_index": 0, "schedule": "x"}\n'
        '{"text": "a", "token_ids": [1], "sample_index": 1, "schedule": "y"}\n': "several schedules",
    }
    for k, (content, message) in enumerate(cases.items()):
        path = tmp_path / f"s{k}.jsonl"
        path.write_text(content)
        with pytest.raises(UserError, match=message):
            ev.read_samples(path)


def test_read_samples_ignores_unknown_fields(tmp_path):
    s = ev.read_samples(write_samples(tmp_path / "a.jsonl", TEXTS, schedule="s1"))
    assert s.texts == TEXTS and s.schedule == "s1" and s.keys[3] == (0, 3)


def test_command_with_baseline(project, judge_dir, capsys):
    samples = write_samples(project / "light.jsonl", TEXTS)
    # the baseline: same (seed, sample_index) keys and texts, in another order → Δ = 0 exactly
    baseline = write_samples(project / "heavy.jsonl", TEXTS, schedule="all-heavy", order=[6, 5, 4, 3, 2, 1, 0])
    out = project / "metrics" / "light.json"
    rc = cli.main(["evaluate", "--samples", str(samples), "--baseline", str(baseline), "--judge", str(judge_dir),
                   "--out", str(out)])
    assert rc == 0
    m = json.loads(out.read_text())
    judge = jd.load_judge(str(judge_dir))
    scores = jd.score_samples(judge, TEXTS, batch_size=3)
    assert m["schedule"] == "all-light" and m["baseline_schedule"] == "all-heavy"
    assert m["num_samples"] == len(TEXTS) and m["bootstrap"] == 200 and m["judge_sha256"] == judge.sha256
    assert m["stage_time"]["wall_s"] > 0 and m["stage_time"]["cpu_s"] > 0  # the command's own time
    assert m["gen_ppl"] == pytest.approx(jd.gen_ppl(*scores), rel=1e-9)
    assert m["gen_ppl_ci_low"] <= m["gen_ppl"] <= m["gen_ppl_ci_high"]
    assert m["entropy_ci_low"] <= m["entropy"] <= m["entropy_ci_high"]
    for key in ("delta_log_ppl", "ppl_ratio_pct", "delta_entropy"):
        assert m[key] == m[f"{key}_ci_low"] == m[f"{key}_ci_high"] == 0.0
    rows = [json.loads(line) for line in (project / "metrics" / "light.per_sample.jsonl").read_text().splitlines()]
    assert [r["sample_index"] for r in rows] == list(range(len(TEXTS)))
    np.testing.assert_allclose([r["nll_sum"] for r in rows], scores.nll_sum, rtol=1e-9)
    assert [r["n_tokens"] for r in rows] == scores.n_tokens.tolist()
    assert "all-light: gen-PPL" in capsys.readouterr().out


def test_command_paired_metrics_are_consistent(project, judge_dir):
    base = write_samples(project / "heavy.jsonl", TEXTS, schedule="all-heavy")
    shuffled = [" ".join(reversed(t.split())) + " zq xv" for t in TEXTS]  # same seeds, worse text
    worse = write_samples(project / "bad.jsonl", shuffled, schedule="bad")
    out = project / "bad.json"
    assert cli.main(["evaluate", "--samples", str(worse), "--baseline", str(base), "--judge", str(judge_dir),
                     "--bootstrap", "300", "--out", str(out)]) == 0
    m = json.loads(out.read_text())
    assert m["delta_log_ppl"] == pytest.approx(math.log(m["gen_ppl"] / m["baseline_gen_ppl"]))
    assert m["ppl_ratio_pct"] == pytest.approx(100 * (m["gen_ppl"] / m["baseline_gen_ppl"] - 1))
    assert m["ppl_ratio_pct_ci_low"] <= m["ppl_ratio_pct"] <= m["ppl_ratio_pct_ci_high"]
    assert m["bootstrap"] == 300


@pytest.mark.parametrize("case", ["missing", "empty", "badline", "judge", "unpaired", "emptytext"])
def test_command_bad_input(project, judge_dir, capsys, case):
    samples = write_samples(project / "s.jsonl", TEXTS)
    args = ["evaluate", "--samples", str(samples), "--judge", str(judge_dir), "--out", str(project / "m.json")]
    expect = {"missing": "nope.jsonl: samples file not found", "empty": "empty file", "badline": ":8: not JSON",
              "judge": "no-judge: judge folder not found", "unpaired": "do not pair",
              "emptytext": "s.jsonl: sample_index 2"}[case]
    if case == "missing":
        args[2] = str(project / "nope.jsonl")
    elif case == "empty":
        samples.write_text("")
    elif case == "badline":
        samples.write_text(samples.read_text() + "{oops\n")
    elif case == "judge":
        args[4] = str(project / "no-judge")
    elif case == "unpaired":
        other = write_samples(project / "b.jsonl", TEXTS[:-1], schedule="all-heavy")
        args += ["--baseline", str(other)]
    elif case == "emptytext":
        write_samples(samples, TEXTS[:2] + [EOT] + TEXTS[3:])
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expect in err and err.count("\n") == 1
    assert not (project / "m.json").exists() and not (project / "m.per_sample.jsonl").exists()
    assert not list(project.glob(".*.tmp"))


def test_command_unwritable_output_is_one_line_before_the_judge_loads(project, judge_dir, capsys, monkeypatch):
    from mdlm.commands import evaluate as evaluate_cmd

    def no_judge(*args, **kwargs):
        raise AssertionError("the judge was loaded before the output was checked")

    monkeypatch.setattr(evaluate_cmd, "load_judge", no_judge)
    samples = write_samples(project / "s.jsonl", TEXTS)
    blocker = project / "a-file"
    blocker.write_text("x")
    args = ["evaluate", "--samples", str(samples), "--judge", str(judge_dir), "--out", str(blocker / "m.json")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a-file/m.json: cannot write the output there" in err
    assert err.count("\n") == 1 and blocker.read_text() == "x"


# ---- the real offline judge (slow: dequantizes a 135M GGUF, ~25 s on 2 cores) ------------------------------

REAL_GGUF = Path(__file__).resolve().parents[1] / "data/assets/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.mark.slow
@pytest.mark.skipif(not REAL_GGUF.is_file(), reason="judge asset not fetched (mdlm assets)")
def test_real_judge_prefers_text_to_shuffled_tokens(tmp_path, monkeypatch):
    (tmp_path / "data/assets/smollm2-135m").mkdir(parents=True)
    (tmp_path / "data/assets/smollm2-135m" / REAL_GGUF.name).symlink_to(REAL_GGUF)
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    monkeypatch.setattr(jd, "_JUDGES", {})
    judge = jd.load_judge("smollm2-135m")
    assert judge.sha256 == "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
    assert judge.bos_id == 0 and judge.max_length == 1024
    assert (tmp_path / "data/judge/smollm2-135m/model.safetensors").is_file()
    text = ("The government announced on Tuesday that it would increase spending on schools and hospitals, "
            "after months of pressure from teachers, doctors and opposition parties.")
    enc = jd.encode_for_judge(judge, text)
    rng = np.random.default_rng(0)
    shuffled = jd.Encoded([enc.ids[0], *rng.permutation(enc.ids[1:]).tolist()], enc.weights, False)
    good, bad = jd.score_encoded(judge, [enc]), jd.score_encoded(judge, [shuffled])
    shutil.rmtree(tmp_path / "data/judge")  # 0.5 GB; pytest keeps recent tmp folders
    assert jd.gen_ppl(*good) < 60 < 300 < jd.gen_ppl(*bad)


# ---- the reference's gen-PPL rule (genppl_protocol: mdlm) with the tiny judge -------------------------------

def mdlm_rule_expected(judge_dir: Path, ids: list[int], context: int, eos: int = 0) -> tuple[float, int]:
    """Σ w·nll and Σ w of one unpadded row under the reference rule, chunk by chunk, from a separate model copy."""
    total, count = 0.0, 0
    for lo in range(0, len(ids), context):
        chunk = ids[lo:lo + context]
        if len(chunk) < 2:
            continue
        nll = reference_nll(judge_dir, chunk)
        first_eos = chunk.index(eos) if eos in chunk else None
        for j in range(1, len(chunk)):
            if chunk[j] != eos or j == first_eos:
                total, count = total + nll[j - 1], count + 1
    return total, count


def test_mdlm_rule_scores_retokenized_rows_without_a_bos_of_its_own(judge, judge_dir, tmp_path):
    texts = [f"{EOT}The cat sat.{EOT}on the log", f"{EOT}A", f"{EOT}Markets fell on Monday.{EOT}{EOT}"]
    samples = ev.read_samples(write_samples(tmp_path / "s.jsonl", texts))
    scores = ev.score_file(judge, samples, batch_size=2, protocol="mdlm", max_length=40)
    for i, text in enumerate(texts):
        ids = judge.tokenizer.encode(text)
        assert ids[0] == 0 and ids.count(0) >= 1  # the EOS string is the judge's EOS id; nothing prepended
        nll, count = mdlm_rule_expected(judge_dir, ids, CONTEXT)
        assert scores.n_tokens[i] == count == len([t for t in ids[1:] if t != 0])  # no EOS is scored
        np.testing.assert_allclose(scores.nll_sum[i], nll, rtol=1e-5)
    assert scores.protocol["genppl_protocol"] == "mdlm" and scores.protocol["retokenize_length"] == 40
    assert scores.protocol["judge_eos_id"] == 0 and scores.protocol["judge_pad_id"] == 0


def test_mdlm_rule_chunks_rows_longer_than_the_judge_context(judge, judge_dir, tmp_path):
    text = EOT + " ".join(["The cat sat on the mat."] * 12) + EOT + "on the log"
    ids = judge.tokenizer.encode(text)
    assert 2 * CONTEXT < len(ids) <= 200
    samples = ev.read_samples(write_samples(tmp_path / "s.jsonl", [text]))
    scores = ev.score_file(judge, samples, batch_size=1, protocol="mdlm", max_length=200)
    nll, count = mdlm_rule_expected(judge_dir, ids, CONTEXT)
    assert scores.n_tokens[0] == count and not scores.truncated[0]
    np.testing.assert_allclose(scores.nll_sum[0], nll, rtol=1e-5)
    truncated = ev.score_file(judge, samples, batch_size=1, protocol="mdlm", max_length=30)
    assert truncated.truncated[0] and truncated.n_tokens[0] == mdlm_rule_expected(judge_dir, ids[:30], CONTEXT)[1]


def test_command_mdlm_rule_and_loud_remainder_drop(project, judge_dir, capsys):
    samples = write_samples(project / "light.jsonl", [EOT + t for t in TEXTS])
    out = project / "m.json"
    base = ["evaluate", "--samples", str(samples), "--judge", str(judge_dir), "--out", str(out),
            "--genppl-protocol", "mdlm"]
    assert cli.main(base) == 0
    m = json.loads(out.read_text())
    assert m["genppl_protocol"] == "mdlm" and m["retokenize_length"] == 32 and m["num_dropped"] == 0
    assert m["num_samples"] == len(TEXTS) and m["judge_context"] == CONTEXT and m["drop_remainder"] is False
    assert "gen-PPL rule mdlm" in capsys.readouterr().out
    assert cli.main(base + ["--drop-remainder"]) == 0  # batch 3, 7 samples: the last one is not scored
    m = json.loads(out.read_text())
    assert m["num_dropped"] == 1 and m["num_samples"] == 6 and m["drop_remainder"] is True
    assert "WARNING: drop_remainder: 1 of 7 samples" in capsys.readouterr().err
    params = json.loads((project / "params.yaml").read_text())
    params["profiles"]["t"]["evaluate"]["genppl_protocol"] = "bogus"
    (project / "params.yaml").write_text(json.dumps(params))
    assert cli.main(base[:-2]) == 2
    err = capsys.readouterr().err
    assert "evaluate.genppl_protocol" in err and err.count("\n") == 1


def test_metrics_record_the_sampling_protocol(judge, tmp_path):
    path = write_samples(tmp_path / "s.jsonl", TEXTS[:3])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    for r in rows:
        r.update(precision="float32-reference", top_p=0.9, steps=1000, noise_removal=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    m = ev.compute_metrics(judge, ev.score_file(judge, ev.read_samples(path), batch_size=3), B=50)
    assert m["sampling_precision"] == "float32-reference" and m["sampling_top_p"] == 0.9
    assert m["genppl_protocol"] == "suite" and m["sampling_steps"] == 1000
    rows[1]["precision"] = "float64"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(UserError, match="several sampler settings"):
        ev.read_samples(path)


def test_profile_scorer_follows_the_gen_ppl_rule(judge, judge_dir, tmp_path):
    from mdlm.config import EvaluateSettings

    texts = [f"{EOT}The cat sat.{EOT}on the log", f"{EOT}A masked diffusion model"]
    settings = EvaluateSettings(judge=str(judge_dir), batch_size=2, genppl_protocol="mdlm")
    score, meta = jd.scorer(settings, "bpe-8k", seq_len=40)
    nll_sum, n_tokens = score(texts)
    expected = ev.score_file(judge, ev.read_samples(write_samples(tmp_path / "s.jsonl", texts)), batch_size=2,
                             protocol="mdlm", max_length=40)
    np.testing.assert_array_equal(n_tokens, expected.n_tokens)
    np.testing.assert_allclose(nll_sum, expected.nll_sum, rtol=1e-9)
    assert meta["genppl_protocol"] == "mdlm" and meta["retokenize_length"] == 40
    with pytest.raises(UserError, match="retokenize_length"):
        jd.scorer(settings, "bpe-8k")
    suite_score, suite_meta = jd.scorer(settings.model_copy(update={"genppl_protocol": "suite"}), "bpe-8k")
    assert suite_meta["genppl_protocol"] == "suite"
    np.testing.assert_array_equal(suite_score(texts)[1], jd.score_samples(judge, texts).n_tokens)
