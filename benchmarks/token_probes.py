"""Why the monitor's token-level candidate is `located-logistic`: leave-one-collection-out AUROC of
three probes on the same tokens, the same folds and the same training rows.

- `pooled.mean`: dense-logistic on the prompt's mean activation (what the old default bundle served);
- `token-logistic`: single-token logits (request tokens labelled with the prompt, template tokens
  benign), pooled by the max of rolling means over 10 tokens;
- `located-logistic`: a locator taught the request's span weights the tokens a dense head reads.

    .venv/bin/python benchmarks/token_probes.py [--layer 14] [--only family:pliny_google,...]

Full benchmark, the activations the study cached at its layer (bfloat16; an extraction with stored
tokens at `--layer` is made if missing). Each held-out collection trains on every other row outside
`calib` (the monitor's `all` mix, `monitor.folds.fold`), with no inner selection: one configuration
per probe, the defaults. Writes `benchmarks/results/token_probes.json` with the commit.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

OUT = Path(__file__).parent / "results" / "token_probes.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", type=int, default=14)
    ap.add_argument("--only", default="", help="comma-separated substrings of the collections to run")
    ap.add_argument("--out", type=Path, default=OUT)
    args = ap.parse_args()

    from assay.data import load_or_build
    from assay.data.spans import request_token_masks
    from assay.metrics import auroc
    from assay.models import load
    from assay.monitor.features import monitor_activations
    from assay.monitor.folds import fold, list_collections
    from assay.probes.inputs import PackedTokens
    from assay.probes.methods import make_probe
    from assay.provenance import provenance
    from assay.runtime import choose_dtype

    t0 = time.perf_counter()
    ds = load_or_build("full", 0)
    dtype, why = choose_dtype("auto")
    lm = load("gemma-3-270m", dtype=dtype, lazy=True)
    acts = monitor_activations(lm, ds, [args.layer], tokens=True, aggregations=["all.mean"])
    packed = PackedTokens.read(acts, args.layer, 512, request_token_masks(ds, lm.tokenizer), progress=True)
    X, M, C = packed.sample(16, 0)
    pooled = acts.pooled(args.layer, "all.mean").float()
    y = ds.labels
    rows: dict[str, dict] = {}
    only = [o for o in args.only.split(",") if o]
    for c in list_collections(ds):
        if only and not any(o in c for o in only):
            continue
        f, t = fold(ds, c), time.perf_counter()
        idx = torch.as_tensor(f.train)
        dense = make_probe("dense-logistic").fit(pooled[f.train], y[f.train])
        token = make_probe("token-logistic").fit(X[idx], y[f.train], mask=M[idx], carries=C[idx])
        located = make_probe("located-logistic")
        located.fit_locator(X[idx], M[idx], C[idx])
        located.fit_head(packed.map(located.pool, f.train), y[f.train])
        rows[c] = {"n": int(len(f.test)), "n_harmful": int(y[f.test].sum()),
                   "pooled.mean": auroc(dense.score(pooled[f.test]), y[f.test]),
                   "token-logistic": auroc(packed.score(token, f.test), y[f.test]),
                   "located-logistic": auroc(packed.score(located, f.test), y[f.test])}
        print(c, f"{time.perf_counter() - t:.0f} s", {k: round(v, 3) for k, v in rows[c].items()}, flush=True)
    means = {k: float(np.mean([r[k] for r in rows.values()])) for k in ("pooled.mean", "token-logistic",
                                                                           "located-logistic")}
    out = {"layer": args.layer, "dtype": dtype, "dtype_choice": why, "collections": rows, "mean_auroc": means,
           "seconds": round(time.perf_counter() - t0, 1), "provenance": provenance(seed=0)}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2, default=str) + "\n")
    print("mean AUROC:", {k: round(v, 3) for k, v in means.items()})


if __name__ == "__main__":
    main()
