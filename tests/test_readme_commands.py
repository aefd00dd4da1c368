"""Every `assay ...` command the README names exists, and every flag it shows is one that command takes."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import typer
import typer.testing

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    spans = re.findall(r"`(assay [^`]+)`", text)
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    lines = [ln.strip().removeprefix("$ ").removeprefix(".venv/bin/") for b in blocks for ln in b.splitlines()]
    return sorted({c.strip() for c in spans + [ln for ln in lines if ln.startswith("assay ")]})


@pytest.mark.parametrize("line", _commands())
def test_readme_command_exists_with_its_flags(line):
    from assay.cli import app

    words = [w for w in line.split()[1:] if w not in ("...", "-v", "--verbose")]
    cmd: click.Command = typer.main.get_command(app)
    path = []
    while words and hasattr(cmd, "get_command") and not words[0].startswith("-"):
        sub = cmd.get_command(click.Context(cmd), words[0])
        assert sub is not None, f"README names `assay {' '.join(path + [words[0]])}`, which does not exist"
        cmd, path = sub, path + [words.pop(0)]
    takes = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for flag in (w.split("=")[0] for w in words if w.startswith("--")):
        assert flag in takes, f"`assay {' '.join(path)}` takes no {flag} (README: `{line}`)"
    res = typer.testing.CliRunner().invoke(app, [*path, "--help"])
    assert res.exit_code == 0, res.output
