import hashlib
from pathlib import Path

import pytest

from mdlm.errors import UserError
from mdlm.schedule import Schedule, dump_schedule, load_schedule, parse_schedule, resolve_schedule_path

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "schedules"


def write(tmp_path, text, name="s.yaml"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ---- shipped schedules ---------------------------------------------------------------------------------

PAPER_T1000 = {
    "all-heavy": "H1000",
    "all-light": "L1000",
    "sandwich": "L125,H750,L125",
    "light-first": "L250,H750",
    "light-last": "H750,L250",
    "light-middle": "H375,L250,H375",
    "sandwich-10": "L50,H900,L50",
    "sandwich-40": "L200,H600,L200",
    "sandwich-50": "L250,H500,L250",
}


@pytest.mark.parametrize("name,notation", sorted(PAPER_T1000.items()))
def test_shipped_schedules_at_1000_steps(name, notation):
    s = load_schedule(SHIPPED / f"{name}.yaml", 1000)
    assert s.name == name
    assert s.notation == notation
    assert sum(n for _, n in s.segments) == 1000


def test_every_shipped_file_is_listed_and_loads_at_profile_step_counts():
    files = sorted(p.stem for p in SHIPPED.glob("*.yaml"))
    assert files == sorted([*PAPER_T1000, "interleaved"])
    for stem in files:
        for steps in (64, 128, 1000):  # smoke, a short run, the paper's T
            s = load_schedule(SHIPPED / f"{stem}.yaml", steps, known_models=["heavy", "light"])
            assert len(s.step_aliases()) == steps


def test_sandwich_step_order_and_fractions():
    s = load_schedule(SHIPPED / "sandwich.yaml", 1000)
    assert [s.model_at(i) for i in (0, 124, 125, 874, 875, 999)] == ["L", "L", "H", "H", "L", "L"]
    assert s.model_name_at(0) == "light" and s.model_name_at(500) == "heavy"
    assert s.counts == {"H": 750, "L": 250}
    assert s.model_steps == {"heavy": 750, "light": 250}
    assert s.light_fraction == 0.25
    assert s.segment_bounds() == [("L", 0, 125), ("H", 125, 875), ("L", 875, 1000)]
    with pytest.raises(IndexError):
        s.model_at(1000)


def test_sandwich_scales_to_smoke_steps():
    assert load_schedule(SHIPPED / "sandwich.yaml", 64).notation == "L8,H48,L8"
    assert load_schedule(SHIPPED / "sandwich-10.yaml", 64).notation == "L3,H58,L3"


def test_interleaved_pattern_every_fourth_step_light():
    s = load_schedule(SHIPPED / "interleaved.yaml", 1000)
    aliases = s.step_aliases()
    assert [i for i, a in enumerate(aliases) if a == "L"] == list(range(3, 1000, 4))
    assert s.light_fraction == 0.25


def test_source_sha256_is_the_file_hash():
    path = SHIPPED / "sandwich.yaml"
    s = load_schedule(path, 1000)
    assert s.source == str(path)
    assert s.source_sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_resolve_schedule_path_by_name(monkeypatch, tmp_path):
    monkeypatch.setenv("MDLM_ROOT", str(ROOT))
    assert resolve_schedule_path("sandwich") == ROOT / "schedules" / "sandwich.yaml"
    own = write(tmp_path, "name: x\nsegments: [H10]\n")
    assert resolve_schedule_path(own) == own
    with pytest.raises(UserError, match="no-such-schedule"):
        resolve_schedule_path("no-such-schedule")


# ---- percentages and rounding --------------------------------------------------------------------------


@pytest.mark.parametrize("segments,steps,expected", [
    (["L12.5%", "H75%", "L12.5%"], 1000, [125, 750, 125]),
    (["L2.5%", "H95%", "L2.5%"], 100, [3, 95, 2]),            # boundaries 2.5 -> 3, 97.5 -> 98 (half up)
    (["L33.33%", "H33.33%", "L33.34%"], 10, [3, 4, 3]),       # boundaries 3.333 -> 3, 6.666 -> 7
    (["L25%", "H50%", "L25%"], 10, [3, 5, 2]),
    (["H10%"] * 10, 7, None),                                 # boundaries 0.7 -> 1, 1.4 -> 1: empty
])
def test_percentage_rounding(segments, steps, expected):
    if expected is None:
        with pytest.raises(UserError, match="rounds to 0 steps at 7 steps"):
            Schedule.from_segments("r", segments, steps)
        return
    s = Schedule.from_segments("r", segments, steps)
    assert [n for _, n in s.segments] == expected
    assert sum(expected) == steps


def test_percentage_lengths_sum_to_steps_and_stay_within_one_step():
    shares = ["L7%", "H13%", "L29%", "H1.5%", "L49.5%"]
    for steps in range(100, 400, 7):
        s = Schedule.from_segments("r", shares, steps)
        lengths = [n for _, n in s.segments]
        assert sum(lengths) == steps
        for (_, n), share in zip(s.segments, (7, 13, 29, 1.5, 49.5), strict=True):
            assert abs(n - steps * share / 100) < 1


# ---- programmatic construction and dumping ---------------------------------------------------------------


def test_from_segments_accepts_tuples_and_strings():
    a = Schedule.from_segments("s", [("L", 125), ("H", 750), ("L", 125)], 1000)
    b = Schedule.from_segments("s", ["L125", "H750", "L125"], 1000)
    c = Schedule.from_segments("s", ["L12.5%", "H75%", "L12.5%"], 1000)
    assert a.segments == b.segments == c.segments == (("L", 125), ("H", 750), ("L", 125))


def test_from_segments_validates():
    with pytest.raises(UserError, match="sum to 900 steps, expected 1000"):
        Schedule.from_segments("s", ["L150", "H750"], 1000)


def test_custom_models_multi_letter_aliases():
    s = Schedule.from_segments("m", ["XL10", "M5", "S5"], 20,
                               models={"XL": "heavy", "M": "medium", "S": "light"})
    assert s.counts == {"XL": 10, "M": 5, "S": 5}
    assert s.model_steps == {"heavy": 10, "medium": 5, "light": 5}
    assert s.model_at(12) == "M" and s.model_name_at(19) == "light"


def test_dump_round_trip(tmp_path):
    s = Schedule.from_segments("gen: 1", ["XL3", "L5", "XL2"], 10, models={"XL": "heavy", "L": "light"},
                               description="made by: search")
    path = tmp_path / "out" / "gen.yaml"
    text = dump_schedule(s, path)
    assert path.read_text() == text
    back = load_schedule(path, 10)
    assert (back.name, back.segments, back.models, back.description) == (s.name, s.segments, s.models,
                                                                          s.description)
    # a pattern schedule dumps as its absolute segments
    inter = load_schedule(SHIPPED / "interleaved.yaml", 12)
    assert load_schedule(write(tmp_path, dump_schedule(inter), "i.yaml"), 12).segments == inter.segments


# ---- validation errors: every one names the file and the problem ------------------------------------------


@pytest.mark.parametrize("text,match", [
    ("name: [unclosed\n", "malformed YAML"),
    ("- L10\n", "expected a mapping"),
    ("name: x\nsegments: [H10]\nsteps: 10\n", "unknown key.*'steps'"),
    ("segments: [H10]\n", "'name' must be a non-empty string"),
    ("name: ''\nsegments: [H10]\n", "'name' must be a non-empty string"),
    ("name: x\ndescription: [a]\nsegments: [H10]\n", "'description' must be a string"),
    ("name: x\n", "exactly one of 'segments' or 'pattern', got neither"),
    ("name: x\nsegments: [H10]\npattern: [H]\n", "exactly one of 'segments' or 'pattern', got both"),
    ("name: x\nsegments: []\n", "'segments' must be a non-empty list"),
    ("name: x\nsegments: H10\n", "'segments' must be a non-empty list"),
    ("name: x\nsegments: [10]\n", "segment 10 must be a string"),
    ("name: x\nsegments: [H10, 'L 5 steps']\n", "does not match the notation"),
    ("name: x\nsegments: ['*5']\n", "does not match the notation"),
    ("name: x\nsegments: [H5, X5]\n", "unknown model alias 'X'"),
    ("name: x\nsegments: [H10, L0]\n", "'L0' must have a positive count"),
    ("name: x\nsegments: [H12, L-2]\n", "'L-2' must have a positive count"),
    ("name: x\nsegments: [H9.5, L0.5]\n", "absolute count must be an integer"),
    ("name: x\nsegments: [H]\n", "lacks a count"),
    ("name: x\nsegments: [H%]\n", "percent sign but no number"),
    ("name: x\nsegments: [H50%, L5]\n", "mix absolute counts and percentages"),
    ("name: x\nsegments: [L2, H5, L2]\n", "sum to 9 steps, expected 10"),
    ("name: x\nsegments: [L12.5%, H75%, L10%]\n", "sum to 97.5%, expected exactly 100%"),
    ("name: x\nsegments: [L1%, H99%]\n", "'L1%' rounds to 0 steps at 10 steps"),
    ("name: x\npattern: []\n", "'pattern' must be a non-empty list"),
    ("name: x\npattern: [H, L25%]\n", "percentages are not allowed in a pattern"),
    ("name: x\npattern: [H, Q]\n", "unknown model alias 'Q'"),
    ("name: x\nmodels: []\nsegments: [H10]\n", "'models' must be a non-empty mapping"),
    ("name: x\nmodels: {H1: heavy}\nsegments: [H10]\n", "alias 'H1' must be one or more letters"),
    ("name: x\nmodels: {H: 3}\nsegments: [H10]\n", "model name of alias 'H' must be a non-empty string"),
])
def test_validation_errors(tmp_path, text, match):
    path = write(tmp_path, text)
    with pytest.raises(UserError, match=match) as info:
        load_schedule(path, 10)
    assert str(info.value).startswith(f"{path}: ")


def test_unknown_model_name_for_the_profile(tmp_path):
    path = write(tmp_path, "name: x\nmodels: {H: heavy, M: medium}\nsegments: [H5, M5]\n")
    with pytest.raises(UserError, match=f"{path}: alias 'M' names unknown model 'medium'"):
        load_schedule(path, 10, known_models=["heavy", "light"])
    assert load_schedule(path, 10).model_steps == {"heavy": 5, "medium": 5}


def test_missing_file_and_bad_step_count(tmp_path):
    with pytest.raises(UserError, match="nope.yaml: schedule file not found"):
        load_schedule(tmp_path / "nope.yaml", 10)
    path = write(tmp_path, "name: x\nsegments: [H10]\n")
    for steps in (0, -5, 2.5, True):
        with pytest.raises(UserError, match="step count must be a positive integer"):
            load_schedule(path, steps)


def test_non_utf8_file_is_a_user_error(tmp_path):
    path = tmp_path / "bin.yaml"
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(UserError, match="malformed YAML"):
        load_schedule(path, 10)


def test_parse_schedule_from_mapping():
    s = parse_schedule({"name": "p", "pattern": ["H3", "L"]}, 10)
    assert s.notation == "H3,L1,H3,L1,H2"
