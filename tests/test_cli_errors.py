"""The top-level handler: a user's mistake is one line and exit 1; the traceback only with -v."""

import subprocess
import sys

import pytest

import assay.cli
from assay.errors import InputError


def _assay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "assay.cli", *args], capture_output=True, text=True, timeout=120)


def test_project_error_is_one_line_and_traceback_only_with_verbose():
    args = ("sae", "train", "--arch", "batchtopk", "--k", "5000", "--width", "4096")
    quiet = _assay(*args)
    assert quiet.returncode == 1
    assert quiet.stderr.strip().splitlines() == [
        "error: SAE k must be in (0, width] = (0, 4096] (active latents per token), got 5000.0"]
    loud = _assay("-v", *args)
    assert loud.returncode == 1 and "Traceback" in loud.stderr and "InputError" in loud.stderr


@pytest.mark.parametrize("exc,first", [
    (InputError("layer 40 is out of range"), "error: layer 40 is out of range"),
    (FileNotFoundError(2, "No such file or directory", "/nope/x.csv"), "error: No such file or directory: /nope/x.csv"),
    (UnicodeDecodeError("utf-8", b"ab\xff", 2, 3, "invalid start byte"), "error: file is not UTF-8 text"),
    (ZeroDivisionError("division by zero"), "error: unexpected ZeroDivisionError: division by zero"),
])
def test_errors_reach_the_user_as_one_line(monkeypatch, capsys, exc, first):
    def boom(**_):
        raise exc

    monkeypatch.setattr(assay.cli, "app", boom)
    monkeypatch.setattr(sys, "argv", ["assay", "data", "validate", "x.csv"])
    with pytest.raises(SystemExit) as stop:
        assay.cli.main()
    assert stop.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith(first) and "Traceback" not in err


@pytest.mark.parametrize("experiment", ["harmful-intent", "sae-frequency", "saes"])
def test_a_run_that_fails_on_a_bad_model_leaves_no_empty_run_folder(tmp_path, experiment):
    out = tmp_path / "runs" / "new"
    run = _assay("experiment", experiment, "--preset", "quick", "--model", str(tmp_path / "no-such-model"),
                 "--out", str(out))
    assert run.returncode == 1 and "model path not found" in run.stderr
    assert not out.exists()
    out.mkdir(parents=True)  # a folder the user made stays, empty or not
    assert _assay("experiment", experiment, "--preset", "quick", "--model", str(tmp_path / "no-such-model"),
                  "--out", str(out)).returncode == 1
    assert out.is_dir()


def test_a_failed_run_keeps_what_it_wrote_and_drops_only_empty_folders(tmp_path):
    from assay.fileio import kept_only_if_used, write_text

    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt), kept_only_if_used(out):
        (out / "parts" / "empty").mkdir(parents=True)
        write_text(out / "sweep" / "part.json", "{}")
        raise KeyboardInterrupt  # a Ctrl-C mid-run: the written part is what a resumed run reuses
    assert (out / "sweep" / "part.json").is_file() and not (out / "parts").exists()
    with kept_only_if_used(out / "ok"):
        (out / "ok").mkdir()
    assert (out / "ok").is_dir()  # success: nothing removed
