"""A result's commit says `+dirty` for changed code, not for rewritten benchmark outputs; a result
names the processor it was measured on."""

from __future__ import annotations

import subprocess

import torch

from assay.provenance import BENCHMARK_OUTPUTS, cpu_model, git_commit, matmul_flags, provenance


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


# Two processors of /proc/cpuinfo, abridged: only the first is read.
CPUINFO = """processor\t: 0
model name\t: AMD EPYC 7B13
flags\t\t: fpu sse2 avx fma avx2 bmi2 sha_ni
processor\t: 1
model name\t: Other
flags\t\t: avx512f amx_tile amx_bf16
"""


def test_a_result_records_the_processor_and_its_matmul_flags():
    assert cpu_model(CPUINFO) == "AMD EPYC 7B13"
    assert matmul_flags(CPUINFO) == ["avx2", "fma"]  # no AVX512 or AMX: bf16 would crawl here
    assert matmul_flags("") == [] and cpu_model("") is None
    hw = provenance()["hardware"]
    assert hw["cpu_capability"] == torch.backends.cpu.get_cpu_capability() and hw["logical_cpus"] >= 1
    assert hw["cpu"] and set(hw["cpu_flags"]) <= {"avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16",
                                                  "amx_tile", "amx_bf16", "amx_fp16"}
