"""The README's results section is what the committed reports say: no hand-copied number."""

from pathlib import Path

import pytest

from assay.experiment.summary import END, START, update_readme

ROOT = Path(__file__).resolve().parents[1]
# The full preset's report only: the quick preset chooses its own configurations (another layer), so
# its numbers cannot sit in the full report's rows; its report is linked from the README instead.
REPORTS = [ROOT / "docs/results/harmful-intent-full/report.json"]


def test_readme_results_section_matches_the_committed_reports():
    if not all(p.exists() for p in REPORTS):
        pytest.skip("no committed reports")
    current, generated = update_readme(ROOT / "README.md", REPORTS)
    assert str(ROOT) not in generated, "report paths must be relative to the README"
    assert current == generated, "README results are stale: run `assay experiment readme " + " ".join(
        str(p.relative_to(ROOT)) for p in REPORTS) + "`"


def test_readme_needs_its_markers(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers\n")
    with pytest.raises(ValueError, match="markers"):
        update_readme(readme, REPORTS)
    assert START in (ROOT / "README.md").read_text() and END in (ROOT / "README.md").read_text()
