"""The architecture, held: the stage order of docs/architecture.md, read from the source.

Every `import assay.X` in a library module (function-level imports included: a lazy import is
still a dependency) must point down the stage order; command-line modules (`cli.py`, `options`)
sit on top and may import anything. A change that needs an upward import has put code in the
wrong stage: move the code, or the rule and the architecture page together.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "assay"

# Bottom to top. A stage may import the stages below it and itself; the foundation modules may
# import one another.
FOUNDATION = {"_lazy", "errors", "fileio", "runtime", "provenance", "distributed"}
STAGES = [{"metrics"}, {"models"}, {"data"}, {"activations"}, {"sae"}, {"probes", "autointerp"}, {"report"},
          {"debug", "monitor"}, {"experiment"}]
LEVEL = {p: 0 for p in FOUNDATION} | {p: i + 1 for i, stage in enumerate(STAGES) for p in stage}
ENTRY_POINTS = {"cli", "options", "__main__"}  # top-level modules above every stage


def _module(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(source: str) -> set[str]:
    out = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
    return {m for m in out if m.startswith("assay.")}  # `assay` alone is the package's version


def _library_modules() -> dict[str, str]:
    mods = {_module(p): p for p in SRC.rglob("*.py")}
    return {m: p.read_text() for m, p in mods.items() if m.split(".")[-1] not in ENTRY_POINTS and m != "assay"}


def _upward(modules: dict[str, str]) -> list[str]:
    """`module imports target` for every import against the stage order."""
    out = []
    for mod, source in sorted(modules.items()):
        here = mod.split(".")[1]
        for target in sorted(_imports(source)):
            there = target.split(".")[1]
            if there != here and (there not in LEVEL or LEVEL[there] > LEVEL[here]
                                  or LEVEL[there] == LEVEL[here] > 0):
                out.append(f"{mod} imports {target}")
    return out


def test_every_library_import_points_down_the_stage_order():
    mods = _library_modules()
    stages = {m.split(".")[1] for m in mods}
    assert stages <= set(LEVEL), f"a package with no stage: {stages - set(LEVEL)}"
    upward = _upward(mods)
    assert not upward, "imports against the stage order (docs/architecture.md):\n" + "\n".join(upward)


def test_the_rule_sees_lazy_upward_and_sideways_imports():
    """A function-level import (the kind that hides a cycle) counts, as does one between two
    packages of one stage; a command-line module is not a library module."""
    lazy = "def f():\n    from assay.experiment.study import Study\n"
    assert _upward({"assay.probes.base": lazy}) == ["assay.probes.base imports assay.experiment.study"]
    assert _upward({"assay.monitor.x": "import assay.debug.latents"}) == ["assay.monitor.x imports assay.debug.latents"]
    assert _upward({"assay.monitor.x": "from assay.probes.inputs import read_live"}) == []
    assert _upward({"assay.runtime": "from assay.distributed import is_main"}) == []  # the foundation
    assert "assay.probes.cli" not in _library_modules()


def test_the_report_reads_method_identity_without_torch():
    """`report/` renders a saved report: it imports the method names table, never torch."""
    code = "import sys, assay.report.tables, assay.report.schema, assay.report.plots; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_the_monitor_assembles_no_inputs():
    """The monitor's build and live scorer read what a probe reads through `probes.inputs`
    (`Inputs`, `read_live`), never from an activation store directly."""
    readers = (".pooled(", ".token_batch(", ".token_batch_roles(", ".example_tokens(", "token_inputs(",
               "PackedTokens.read(", "pool_roles(", "pool_tokens(")
    hits = [f"{p.name}: {r}" for p in (SRC / "monitor").glob("*.py") for r in readers if r in p.read_text()]
    assert not hits, hits


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while comp[-1:] != [v]:
                comp.append(stack.pop())
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycle_inside_the_experiment_package():
    """The study's modules form a tree of imports (lazy ones included): a stage takes typed
    objects (`StudyData`, `PartCache`), never the study that calls it."""
    mods = {m: src for m, src in _library_modules().items() if m.startswith("assay.experiment.")}
    graph = {m: {t for t in _imports(src) if t in mods} for m, src in mods.items()}
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]  # the check can fail


def test_no_library_module_over_500_lines():
    long = {p.relative_to(SRC).as_posix(): n for p in SRC.rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 500}
    assert not long, long
