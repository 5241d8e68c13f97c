"""The `mdlm` entry point: every failure a user can cause is one line on stderr and exit status 2."""

import importlib

import pytest

from mdlm.cli import main


def test_a_file_that_cannot_be_written_is_one_line(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    out = blocker / "flops.json"  # a path under a regular file: no folder can be made there
    assert main(["flops", "--profile", "smoke", "--schedule", "sandwich", "--no-measure", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a-file" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and blocker.read_text() == "x"


def test_unknown_command_is_exit_2(capsys):
    assert main(["nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("command, out_flag", [("search", "--out"), ("importance", "--out"),
                                               ("frontier", "--out-dir"), ("timing", "--out")])
def test_long_commands_check_their_output_before_loading_models(tmp_path, monkeypatch, capsys, command, out_flag):
    """search, importance, frontier and timing run for minutes: an output they cannot write is one line at once,
    before any model is loaded (a loader that fails the test stands in for the models)."""
    module = importlib.import_module(f"mdlm.commands.{command}")

    def no_models(*args, **kwargs):
        raise AssertionError(f"{command} loaded the models before checking its output")

    monkeypatch.setattr(module, "profile_denoisers", no_models)
    if command == "frontier":  # its grid's optimized points need the search's output: an empty grid instead
        monkeypatch.setattr(module, "frontier_schedules", lambda *args, **kwargs: [])
        monkeypatch.setattr(module, "_optimizer", lambda *args: None)
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    assert main([command, "--profile", "smoke", out_flag, str(blocker / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "a-file/out" in err and "cannot write the output there" in err
    assert len(err.strip().splitlines()) == 1 and blocker.read_text() == "x"
