"""End to end on the bundled Gemma 3 270M: build a monitor on the quick benchmark, serve it, and check
that the server's score of a prompt is the score of the cached activations its thresholds were set on."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.slow
def test_quick_monitor_built_served_and_scored_like_its_cache(bundled, tmp_path):
    from fastapi.testclient import TestClient

    from assay.data import load_or_build
    from assay.monitor.build import build_monitor
    from assay.monitor.bundle import load_bundle
    from assay.monitor.features import monitor_activations
    from assay.monitor.scorer import Monitor
    from assay.monitor.server import create_app

    out = build_monitor("quick", tmp_path / "bundle", lm=bundled, layers=[9], aggregations=["resp-5", "all.mean"],
                        min_calibration=40, inner_k=2, progress=False)
    bundle = load_bundle(out)
    spec = bundle.spec
    nested = spec["card"]["selection"]["nested"]
    assert len(nested) >= 8 and all(0.0 <= r["auroc"] <= 1.0 for r in nested.values())
    assert spec["model"]["weights_sha256"] and spec["layer"] == 9

    ds = load_or_build("quick")
    tokens = spec["inputs"]["reads"] == "tokens"  # the selection may choose the token-level candidate
    acts = monitor_activations(bundled, ds, [9], tokens=tokens, aggregations=["all.mean", "resp-5"], progress=False)
    rows = [i for i, e in enumerate(ds.examples) if e.split == "ood"][:24]
    if tokens:
        from assay.probes.inputs import PackedTokens

        cached = PackedTokens.read(acts, 9, spec["inputs"]["max_tokens"]).score(bundle.probe, rows)
    else:
        cached = bundle.probe.score(acts.pooled(9, spec["inputs"]["aggregation"]).float()[rows])

    monitor = Monitor(bundle, bundled)
    with TestClient(create_app(monitor, max_wait_ms=20), base_url="http://localhost") as client:
        res = client.post("/v1/moderations", json={"input": [ds[i].text for i in rows]})
        assert res.status_code == 200, res.text
        served = [r["assay"]["score"] for r in res.json()["results"]]
        flags = [r["flagged"] for r in res.json()["results"]]
    np.testing.assert_allclose(served, cached, atol=2e-3)  # batch composition moves low-order bits only
    t = monitor.thresholds[monitor.default_threshold]
    assert flags == [bool(s > t) for s in served]
