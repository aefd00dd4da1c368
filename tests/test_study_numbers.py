"""The smoke study's numbers equal the ones pinned before the probe-interface refactor.

`tests/data/smoke_study_numbers.json` was written by `python tests/smoke_study.py --record` on the
code before the refactor (its commit is in the file). Every part's per-example scores must match
bit for bit, and every report row's metrics and every paired comparison exactly. Float results
depend on the platform (torch build, CPU instruction set, thread count), so on another platform
the test says so and skips; re-record there from that commit to check.
"""

from __future__ import annotations

import json

import pytest

from smoke_study import NUMBERS, measure, platform_signature


@pytest.mark.slow
def test_study_numbers_equal_the_pinned_ones(smoke_run):
    ref = json.loads(NUMBERS.read_text())
    if ref["platform"] != platform_signature():
        pytest.skip(f"numbers pinned on {ref['platform']}, this is {platform_signature()}")
    report, out = smoke_run
    got = measure(out, report.model_dump(mode="json"))
    assert sorted(got["parts"]) == sorted(ref["parts"]), "the study fitted another set of runs"
    differing = [k for k, v in ref["parts"].items() if got["parts"][k] != v]
    assert not differing, f"{len(differing)} runs' scores changed, e.g. {differing[:5]}"
    rows = [k for k, v in ref["rows"].items() if got["rows"].get(k) != v]
    assert not rows and len(got["rows"]) == len(ref["rows"]), f"report rows changed: {rows[:5]}"
    assert got["comparisons"] == ref["comparisons"]
