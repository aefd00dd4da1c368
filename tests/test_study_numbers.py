"""The smoke study's numbers equal the pinned ones.

`tests/data/smoke_study_numbers*.json` hold one record per platform, each written by `python
tests/smoke_study.py --record` on it (its commit is in the file); the test reads the one recorded
on this platform. The first (`smoke_study_numbers.json`, AVX512-BF16) was recorded before the
probe-interface refactor, and re-recorded at babf2ed, after 1a1a2e6 moved logistic fits with fewer
rows than features to the span of the rows: the same minimiser, other low bits (scores moved by at
most 3.7e-9, thresholds by at most 6.4e-10; every AUROC, AUPRC, recall at FPR, interval and paired
comparison stayed the same, and the code before 1a1a2e6 still reproduced every part the old file
held). At 0b742a7 MiniLM began embedding texts batched by length, which moved the low bits of the
`minilm_text` part's scores: that record no longer pins that part (`unpinned`, with why), and an
AVX2-only record (`smoke_study_numbers-avx2-t2.json`) was added at 0b742a7, after checking on that
platform that 61b4949 and 0b742a7 differ in that part's scores only (all 504 report rows and every
comparison identical). An AVX512 platform with AMX (`smoke_study_numbers-avx2-avx512f-avx512_bf16-
amx_bf16-t2.json`) was recorded at 974c5d7: there every part's scores differ from the
AVX512-BF16 record's (other matmul kernels), and 476 of the 504 report rows differ there in their
score threshold alone (by at most 0.0037); every AUROC, AUPRC, recall at FPR and interval is the same,
and so are all 240 paired comparisons. Every pinned part's per-example scores must match bit for bit,
and every report row's metrics and every paired comparison exactly. Float results depend on the platform
(torch build, CPU instruction set, thread count), so on a platform without a record the test says
so and skips; record there to check. Runs fitted by scikit-learn also depend on its (and SciPy's,
NumPy's) version: they are compared only where the record names the same versions (records name
them since they were found to move LDA's and TF-IDF's bits between installs on one platform).
"""

from __future__ import annotations

import json

import pytest

from smoke_study import SKLEARN_METHODS, library_versions, measure, platform_signature, record_for, records


@pytest.mark.slow
def test_study_numbers_equal_the_pinned_ones(smoke_run):
    path = record_for(platform_signature())
    if path is None:
        pinned = [json.loads(p.read_text())["platform"] for p in records()]
        pytest.skip(f"numbers pinned on {pinned}, this is {platform_signature()}")
    ref = json.loads(path.read_text())
    report, out = smoke_run
    got = measure(out, report.model_dump(mode="json"))
    # a part a record no longer pins (`unpinned`, with why) must still be fitted; its bits are not held
    assert sorted(got["parts"]) == sorted([*ref["parts"], *ref.get("unpinned", {})]), \
        "the study fitted another set of runs"
    # scikit-learn's fits are compared only under the library versions they were recorded with (the
    # file may not name them: then only the torch-fitted runs, most of them, are held to their bits)
    same_libraries = ref.get("libraries") == library_versions()

    def held(key: str) -> bool:
        return same_libraries or not any(m in key for m in SKLEARN_METHODS)

    differing = [k for k, v in ref["parts"].items() if held(k) and got["parts"][k] != v]
    assert not differing, f"{len(differing)} runs' scores changed, e.g. {differing[:5]}"
    assert sum(map(held, ref["parts"])) > len(ref["parts"]) // 2
    rows = [k for k, v in ref["rows"].items() if held(k) and got["rows"].get(k) != v]
    assert not rows and len(got["rows"]) == len(ref["rows"]), f"report rows changed: {rows[:5]}"
    comparisons = [c for c in ref["comparisons"] if held(c)]
    assert [c for c in got["comparisons"] if held(c)] == comparisons
