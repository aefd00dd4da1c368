"""The names table (`assay.probes.names`): torch-free, one with the registry, the one label, and no
method name compared with a string outside `assay.probes`."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from assay.probes.names import KINDS, NAMES, info, label


def test_the_report_reads_the_table_without_torch():
    code = "import sys, assay.probes.names, assay.report.tables; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_table_is_the_registrys_and_the_reports_kinds():
    from typing import get_args

    from assay.probes.methods import METHODS
    from assay.report.schema import MethodKind

    assert list(NAMES) == list(METHODS)
    assert all(METHODS[n].kind == info(n).kind and METHODS[n].reads_sae == info(n).on_sae for n in NAMES)
    assert get_args(MethodKind) == (*KINDS, "other")
    assert info("no-such-method").kind == "other" and not info("no-such-method").sweeps_k


def test_the_label_shows_k_where_the_method_sweeps_it():
    ref = {"method": "k-sparse", "k": 5, "selector": "l1", "features": "all.max", "sae": "chat"}
    assert label(ref) == "k-sparse k=5 (l1) [all.max] on chat"
    assert label(ref, features=False, sae=" on the {} SAE") == "k-sparse k=5 (l1) on the chat SAE"
    assert label({**ref, "method": "1-sparse", "k": 1, "selector": None}) == "1-sparse [all.max] on chat"
    assert label({"method": "dense-logistic", "features": "all.max"}) == "dense-logistic [all.max]"
    assert label({"method": "k-sparse", "k": 5, "sae": "chat"}, sae=" [{}]") == "k-sparse k=5 [chat]"


def test_no_method_name_is_compared_with_a_string_outside_probes():
    src = Path(__file__).parents[1] / "src" / "assay"
    names = "|".join(map(re.escape, NAMES))
    pattern = re.compile(rf"""(?<!\.kind )(==|!=|\bin)\s*\(?\s*["']({names})["']""")  # kinds share some names
    hits = [f"{p.relative_to(src)}:{i}: {line.strip()}" for p in sorted(src.rglob("*.py"))
            if p.relative_to(src).parts[0] != "probes"
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert not hits, "ask assay.probes.names instead:\n" + "\n".join(hits)
