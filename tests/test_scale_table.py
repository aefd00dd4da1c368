"""docs/scale.md's table is written from benchmarks/results/scale.json by benchmarks/scale.py: redoing it
from the JSON gives the committed table, whose measured numbers are the JSON's."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parents[1]


def test_the_committed_table_is_the_json_rendered(tmp_path):
    shutil.copy(ROOT / "benchmarks/results/scale.json", tmp_path / "scale.json")
    shutil.copy(ROOT / "docs/scale.md", tmp_path / "scale.md")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/scale.py"), "--render", "--out",
                          str(tmp_path / "scale.json"), "--doc", str(tmp_path / "scale.md")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "scale.md").read_text() == (ROOT / "docs/scale.md").read_text()
    r = json.loads((tmp_path / "scale.json").read_text())
    doc = (ROOT / "docs/scale.md").read_text()
    assert f"| {r['extraction']['tokens_per_s']:,.0f} ({r['extraction']['dtype']}) |" in doc
    assert f"| {r['sae_training']['tokens_per_s']:,.0f} (float32) |" in doc
    assert f"= {r['sae_training']['fraction_of_bound']:.2f} of the" in doc
    assert str(r["provenance"]["git_commit"])[:12] in doc and "+dirty" not in r["provenance"]["git_commit"]


def test_the_committed_gpu_section_is_the_gpu_json_rendered(tmp_path):
    """docs/scale.md's measured-GPU section is written by benchmarks/gpu.py --render from its result."""
    shutil.copy(ROOT / "docs/scale.md", tmp_path / "scale.md")
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks/gpu.py"), "--render",
                          str(ROOT / "benchmarks/results/gpu-h200.json"), "--doc", str(tmp_path / "scale.md"),
                          "--compiled", str(ROOT / "benchmarks/results/gpu-compile-h200.json")],
                         capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    assert (tmp_path / "scale.md").read_text() == (ROOT / "docs/scale.md").read_text()
    r = json.loads((ROOT / "benchmarks/results/gpu-h200.json").read_text())
    doc = (ROOT / "docs/scale.md").read_text()
    bf16 = r["extraction"]["bfloat16"]
    assert f"| {bf16['tokens_per_s']:,.0f} | {bf16['fraction_of_peak']:.2f} of the bfloat16 peak |" in doc
    compiled = json.loads((ROOT / "benchmarks/results/gpu-compile-h200.json").read_text())["compiled_extraction"]
    assert f"| {compiled['bfloat16']['compiled_tokens_per_s']:,.0f} | " in doc
    assert f"{compiled['bfloat16']['speedup']:.2f}x the eager tokens/s in bf16" in doc
    sae = r["sae_training"]["batch 16384/width 16384/float32"]
    assert f"| {sae['tokens_per_s']:,.0f} | {sae['fraction_of_fp32_bound']:.2f} of the fp32 bound |" in doc
