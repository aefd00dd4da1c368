"""Every `assay ...` command the README names exists, and every flag it shows is one that command takes.

Commands come from the README's fenced code blocks (```bash, ```sh, ```console or plain; a leading
`$ ` or `.venv/bin/` is stripped, `\\` continuations are joined, `# comments` dropped) and from its
inline code spans. Each distinct line is one test: its command path must resolve to a command whose
`--help` exits 0, and every `--flag` the line uses must be an option of that command and appear in
its `--help` text (so a README example with a flag that does not exist, or is hidden, fails).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import typer
import typer.testing

README = Path(__file__).resolve().parents[1] / "README.md"
# Words in the README's prose that stand for "anything" rather than a subcommand or an argument.
PLACEHOLDERS = {"...", "-v", "--verbose"}
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _shell_lines(block: str) -> list[str]:
    """A code block's command lines: continuations joined, prompts, venv prefixes and comments dropped."""
    out, pending = [], ""
    for raw in block.splitlines():
        line = raw.rstrip()
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        line = line.removeprefix("$ ").removeprefix(".venv/bin/").removeprefix("$(BIN)/")
        line = re.sub(r"\s+#.*$", "", line).strip()
        if line:
            out.append(line)
    return out


def _commands() -> list[str]:
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"^```[\w-]*[ \t]*\n(.*?)^```", text, re.S | re.M)
    block_lines = [ln for b in blocks for ln in _shell_lines(b)]
    spans = [s.strip() for s in re.findall(r"`(assay [^`]+)`", text)]
    lines = {ln for ln in block_lines + spans if ln.startswith("assay ")}
    return sorted(" ".join(ln.split()) for ln in lines)


def test_readme_names_some_commands():
    assert len(_commands()) >= 5, _commands()


@pytest.mark.parametrize("line", _commands(), ids=lambda line: line.replace(" ", "_"))
def test_readme_command_exists_with_its_flags(line):
    from assay.cli import app

    words = [w for w in line.split()[1:] if w not in PLACEHOLDERS]
    cmd = typer.main.get_command(app)  # typer >= 0.24 vendors click: read its objects, don't isinstance them
    path: list[str] = []
    while words and getattr(cmd, "commands", None) and not words[0].startswith("-"):
        sub = cmd.commands.get(words[0])
        assert sub is not None, f"README names `assay {' '.join(path + [words[0]])}`, which does not exist (README: `{line}`)"
        cmd, path = sub, path + [words.pop(0)]

    res = typer.testing.CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "240", "NO_COLOR": "1"})
    assert res.exit_code == 0, f"`assay {' '.join([*path, '--help'])}` exited {res.exit_code}:\n{res.output}"
    help_text = ANSI.sub("", res.output)

    takes = {opt for p in cmd.params for opt in (*p.opts, *p.secondary_opts)}
    for flag in dict.fromkeys(w.split("=")[0] for w in words if w.startswith("--")):
        assert flag in takes, f"`assay {' '.join(path)}` takes no {flag} (README: `{line}`)"
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), (
            f"`assay {' '.join(path)} --help` does not show {flag} (README: `{line}`)")
