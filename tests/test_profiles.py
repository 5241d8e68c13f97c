"""The typed profile: every shipped profile validates; bad input is one line naming the file and key path."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml

from mdlm import cli
from mdlm.config import Profile
from mdlm.errors import UserError
from mdlm.profiles import load_profile

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())


@pytest.mark.parametrize("name", sorted(PARAMS["profiles"]))
def test_every_shipped_profile_validates(name):
    profile = load_profile(name, ROOT / "params.yaml")
    assert isinstance(profile, Profile) and profile.name == name
    with pytest.raises((TypeError, ValueError, dataclasses.FrozenInstanceError)):
        profile.sample.steps = 1  # frozen: no stage can change another's settings


def test_defaults_fill_optional_keys(tmp_path):
    params = copy.deepcopy(PARAMS)
    del params["profiles"]["smoke"]["evaluate"]["bootstrap"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    assert load_profile("smoke", path).evaluate.bootstrap == 2000


def test_overrides_replace_keys_and_none_keeps_them():
    p = load_profile("smoke", ROOT / "params.yaml", overrides={"sample": {"steps": 8, "seed": None}})
    assert p.sample.steps == 8 and p.sample.seed == PARAMS["profiles"]["smoke"]["sample"]["seed"]


def write(tmp_path, change) -> Path:
    params = copy.deepcopy(PARAMS)
    change(params)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


BAD = [
    ("unknown key", lambda p: p["profiles"]["smoke"]["sample"].update(temperature=0.9),
     "profiles.smoke.sample.temperature: unknown key"),
    ("missing key", lambda p: p["profiles"]["smoke"]["sample"].pop("steps"),
     "profiles.smoke.sample.steps: required key missing"),
    ("missing section", lambda p: p["profiles"]["smoke"].pop("model"),
     "profiles.smoke.model: required key missing"),
    ("wrong type", lambda p: p["profiles"]["smoke"]["sample"].update(steps="64"),
     "profiles.smoke.sample.steps: Input should be a valid integer (got '64')"),
    ("string for a bool", lambda p: p["profiles"]["smoke"]["data"].update(wrap="yes"),
     "profiles.smoke.data.wrap: Input should be a valid boolean (got 'yes')"),
    ("zero size", lambda p: p["profiles"]["smoke"]["sample"].update(batch_size=0),
     "profiles.smoke.sample.batch_size: Input should be greater than 0 (got 0)"),
    ("negative size", lambda p: p["profiles"]["smoke"]["model"].update(hidden=-32),
     "profiles.smoke.model.hidden: Input should be greater than 0 (got -32)"),
    ("unknown choice", lambda p: p["profiles"]["smoke"]["sample"].update(predictor="euler"),
     "profiles.smoke.sample.predictor: Input should be 'ddpm_cache' or 'ddpm' (got 'euler')"),
    ("cross-field rule", lambda p: p["profiles"]["smoke"]["search"].update(light=4),
     "profiles.smoke.search: light 4 must be < segments 4"),
    ("timed schedules without the reference", lambda p: p["profiles"]["smoke"]["timing"].update(
        schedules=["sandwich", "all-light"]),
     "profiles.smoke.timing: schedules ['sandwich', 'all-light'] must include all-heavy, the reference of every round"),
    ("timed schedules repeated", lambda p: p["profiles"]["smoke"]["timing"].update(
        schedules=["all-heavy", "sandwich", "sandwich"]),
     "profiles.smoke.timing: schedules ['all-heavy', 'sandwich', 'sandwich'] must be distinct"),
    ("no timed schedules", lambda p: p["profiles"]["smoke"]["timing"].update(schedules=[]),
     "profiles.smoke.timing.schedules: List should have at least 1 item after validation, not 0"),
    ("profile key names a missing block", lambda p: p.update(profile="medium"),
     "profile: unknown profile 'medium' (known: lm1b, owt, smoke, tiny, tiny-frontier)"),
    ("block is not a mapping", lambda p: p["profiles"].update(smoke=[1, 2]),
     "profiles.smoke: expected a mapping, got list"),
]


@pytest.mark.parametrize("what, change, message", BAD, ids=[b[0] for b in BAD])
def test_bad_profile_is_one_line_with_the_key_path(tmp_path, what, change, message):
    path = write(tmp_path, change)
    name = None if what.startswith("profile key") else "smoke"
    with pytest.raises(UserError) as err:
        load_profile(name, path)
    text = str(err.value)
    assert text == f"{path}: {message}" and "\n" not in text


def test_cli_reports_a_bad_profile_in_one_line_with_status_2(tmp_path, monkeypatch, capsys):
    write(tmp_path, lambda p: p["profiles"]["smoke"]["sample"].update(steps=-1))
    monkeypatch.setenv("MDLM_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert cli.main(["sample", "--profile", "smoke", "--schedule", "sandwich"]) == 2
    err = capsys.readouterr().err
    assert err == "error: params.yaml: profiles.smoke.sample.steps: Input should be greater than 0 (got -1)\n"


def test_unknown_profile_on_the_command_line(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("MDLM_ROOT", raising=False)
    assert cli.main(["prepare", "--profile", "huge"]) == 2
    assert capsys.readouterr().err.startswith("error: params.yaml: profile: unknown profile 'huge'")


def test_an_override_is_validated_like_the_file():
    with pytest.raises(UserError, match=r"sample.top_p \(command-line override\): Input should be less than or"):
        load_profile("smoke", ROOT / "params.yaml", overrides={"sample": {"top_p": 1.5}})
