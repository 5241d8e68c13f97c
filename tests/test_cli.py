"""The `mdlm` entry point: every failure a user can cause is one line on stderr and exit status 2."""

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
