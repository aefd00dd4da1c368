"""Are a refactor's study numbers the same? Run the smoke study from a source tree and compare two runs.

    python scripts/smoke_numbers.py run TREE OUT.json      # the smoke study from TREE's src/ and tests/
    python scripts/smoke_numbers.py compare A.json B.json  # exit 1 unless parts, rows and comparisons match

`run` uses `tests/smoke_study.py`'s config and `measure` (sha256 of every part's per-example scores, the
metrics of every report row, every paired comparison) and keeps the report beside them. Give each run its
own empty `ASSAY_CACHE` (a shared cache can hand one tree the other's activations or SAEs); an old tree
(`git worktree add /tmp/before COMMIT`) is run with this venv's Python.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path


def run(tree: Path, out: Path) -> None:
    sys.path[:0] = [str(tree / "src"), str(tree / "tests")]
    import assay

    if not Path(assay.__file__).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"imported assay from {assay.__file__}, not from {tree}")
    from smoke_study import measure, smoke_config

    from assay.experiment import run_study

    with tempfile.TemporaryDirectory() as tmp:
        run_study(smoke_config(), Path(tmp) / "run", progress=False)
        numbers = measure(Path(tmp) / "run")
        numbers["report"] = json.loads((Path(tmp) / "run" / "report.json").read_text())
    out.write_text(json.dumps(numbers, indent=1, sort_keys=True))
    print(f"{out}: {len(numbers['parts'])} parts, {len(numbers['rows'])} rows, {len(numbers['comparisons'])} comparisons")


def compare(a_path: Path, b_path: Path) -> int:
    a, b = json.loads(a_path.read_text()), json.loads(b_path.read_text())
    bad = 0
    for key in ("parts", "rows", "comparisons"):
        differ = sorted(k for k in set(a[key]) | set(b[key]) if a[key].get(k) != b[key].get(k))
        print(f"{key}: {len(a[key])} vs {len(b[key])}, {len(differ)} differ" + (f", e.g. {differ[:3]}" if differ else ""))
        bad += len(differ)
    strip = lambda r: [{k: v for k, v in x.items() if k != "computed_by"} for x in r["results"]]  # noqa: E731
    same_findings = a["report"]["findings"] == b["report"]["findings"] and strip(a["report"]) == strip(b["report"])
    print(f"report rows (but computed_by) and findings equal: {same_findings}")
    return 0 if bad == 0 and same_findings else 1


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] not in ("run", "compare"):
        raise SystemExit(__doc__)
    if sys.argv[1] == "run":
        run(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        sys.exit(compare(Path(sys.argv[2]), Path(sys.argv[3])))
