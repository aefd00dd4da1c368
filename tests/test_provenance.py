"""A result's commit says `+dirty` for changed code, not for rewritten benchmark outputs."""

from __future__ import annotations

import subprocess

from assay.provenance import BENCHMARK_OUTPUTS, git_commit


def test_benchmark_outputs_do_not_make_a_checkout_dirty(tmp_path):
    def git(*args: str) -> None:
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    git("init", "-q")
    files = {"src/a.py": "x = 1\n", "benchmarks/results/b.json": "{}\n", "docs/scale.md": "table\n", "docs/other.md": "t\n"}
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    git("add", "-A")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    clean = git_commit(tmp_path)
    assert clean is not None and not clean.endswith("+dirty")
    assert "benchmarks/results" in BENCHMARK_OUTPUTS
    (tmp_path / "benchmarks/results/b.json").write_text('{"new": 1}\n')
    (tmp_path / "docs/scale.md").write_text("new table\n")
    assert git_commit(tmp_path) == clean  # outputs rewritten: still the commit
    for changed in ("src/a.py", "docs/other.md"):
        (tmp_path / changed).write_text("changed\n")
        assert git_commit(tmp_path) == clean + "+dirty", changed
        git("checkout", "-q", "--", changed)
