"""Build the harmful-intent benchmark: train / val (in distribution) and ood.

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
| benign_transform | 0 | a benign request under a transformation (either frame) |

train/val use the ID families and transformations, ood the OOD ones plus a held-out harmful
source (Do-Not-Answer). Harmful behaviours are clustered by near-duplication and whole clusters
go to one split. Benign requests are drawn to match the harmful ones' surface (question or not,
leading wh-word, newline or not, length bin), so those cues do not give the label away.
"""

from __future__ import annotations

import functools
import json
import logging
import random
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from assay.data import edgy, sources
from assay.data.audit import WARN_AT, cue_audit, strength
from assay.data.dataset import SPLITS, Dataset, Example, fingerprint, read_jsonl_examples, write_jsonl_examples
from assay.data.jailbreaks import UNFILLED_PLACEHOLDER, Family, families_for
from assay.data.normalize import normalize_text
from assay.data.screen import ScreenReport, format_reason, harm_reason, topic_words
from assay.data.splits import ShingleIndex, assign_clusters, cluster_near_duplicates, cross_split_near_duplicates
from assay.data.transforms import COMPLY, INNOCUOUS, Transformation, transformations_for

log = logging.getLogger(__name__)

BUILDER_VERSION = "1"
PRESETS: dict[str, dict[str, int]] = {
    "quick": {"train": 300, "val": 150, "ood": 200},
    "full": {"train": 4046, "val": 1014, "ood": 3850},  # GDM's sizes
}
SPLIT_FRACTIONS = {"train": 0.6, "val": 0.15, "ood": 0.25}  # of HarmBench+AdvBench behaviours
NEAR_DUP = 0.5  # Jaccard of content-word bigrams at or above which two requests count as one behaviour
BENIGN_CHARS = (20, 600)

# Shares of each class's half of a split. The jailbreak and transformation shares are close across
# classes so that neither "jailbreak present" nor "transformation present" predicts the label.
HARMFUL_MIX = {"plain": 0.30, "jailbreak": 0.50, "comply": 0.20}
BENIGN_MIX = {"plain": 0.10, "topic": 0.10, "jailbreak": 0.45, "innocuous": 0.20, "transform": 0.15}

_LEN_EDGES = (50, 75, 100, 130, 170, 230, 320, 450)


@dataclass(frozen=True)
class Request:
    """A request before wrapping: normalised text, where it came from, its behaviour id."""

    text: str
    source: str
    behaviour_id: str
    topic: bool = False


def default_out_dir(preset: str, seed: int) -> Path:
    from assay.runtime import cache_dir

    return cache_dir() / "data" / f"harmful-intent-{preset}-s{seed}"


# ----------------------------------------------------------------------------- sources -> requests


def harmful_requests() -> list[Request]:
    """HarmBench then AdvBench behaviours, normalised, exact duplicates dropped."""
    out, seen = [], set()
    for src, prefix, texts in (("harmbench", "hb", sources.harmbench_behaviours()),
                               ("advbench", "ab", sources.advbench_behaviours())):
        for i, t in enumerate(texts):
            n = normalize_text(t)
            if n.lower() not in seen:
                seen.add(n.lower())
                out.append(Request(n, src, f"{prefix}:{i:03d}", True))
    return out


def benign_pool(harmful: list[Request], report: ScreenReport) -> list[Request]:
    """Screened ShareGPT first turns, normalised and deduplicated (cached per process: no randomness)."""
    pool, rep = _benign_pool(tuple(harmful))
    for k, v in rep.__dict__.items():
        setattr(report, k, v)
    return list(pool)


@functools.lru_cache(maxsize=2)
def _benign_pool(harmful: tuple[Request, ...]) -> tuple[tuple[Request, ...], ScreenReport]:
    report = ScreenReport()
    index = ShingleIndex(r.text for r in harmful)
    out, seen = [], set()
    n_records = 0
    turns = []
    for rec in sources.iter_sharegpt_records():
        n_records += 1
        conv = rec.get("conversations") or []
        if conv and str(conv[0].get("from", "")).lower() in ("human", "user") and isinstance(conv[0].get("value"), str):
            turns.append((str(rec.get("id", n_records)), conv[0]["value"]))
    report.records, report.first_user_turns = n_records, len(turns)
    for rid, raw in turns:
        if len(raw) > 2 * BENIGN_CHARS[1]:  # skip normalising what is far too long anyway
            report.drop("too_long", raw)
            continue
        text = normalize_text(raw)
        reason = format_reason(text, *BENIGN_CHARS) or harm_reason(text)
        if reason is None and index.similar(text, NEAR_DUP):
            reason = "near_copy_of_harmful_behaviour"
        if reason is None and text.lower() in seen:
            reason = "duplicate"
        if reason:
            report.drop(reason, text)
            continue
        seen.add(text.lower())
        topic = bool(topic_words(text))
        report.kept += 1
        report.topic_kept += topic
        out.append(Request(text, "sharegpt", f"sharegpt:{rid}", topic))
    return tuple(out), report


# ----------------------------------------------------------------------------- surface matching


def surface_key(text: str) -> tuple[bool, bool, bool, int]:
    """(is a question, starts with a wh-word, has a newline, length bin): what benign draws match."""
    from assay.data.audit import _WH

    n = len(text)
    return (text.rstrip().endswith("?"), bool(_WH.match(text)), "\n" in text,
            sum(n >= e for e in _LEN_EDGES))


class MatchedSampler:
    """Draws benign requests whose surface key matches a given harmful request's.

    Falls back to neighbouring length bins, then drops the wh-word and newline constraints, and
    reuses requests (least used first) only when the split's pool is exhausted.
    """

    def __init__(self, pool: list[Request], rng: random.Random, used: Counter | None = None,
                 cross_question: bool = False):
        self.cross_question = cross_question
        self.rng = rng
        self.by_key: dict[tuple, list[Request]] = defaultdict(list)
        for r in pool:
            self.by_key[surface_key(r.text)].append(r)
        for v in self.by_key.values():
            rng.shuffle(v)
        self.used: Counter = Counter() if used is None else used
        self.pool = pool
        self.by_question = {q: [r for r in pool if surface_key(r.text)[0] == q] or pool for q in (False, True)}

    def draw(self, like: str) -> Request:
        q, wh, nl, b = surface_key(like)
        for relax in range(4 if self.cross_question else 3):
            for d in (0, -1, 1, -2, 2, -3, 3):
                keys = [(q, wh, nl, b + d)] if relax == 0 else (
                    [(q, w, nl, b + d) for w in (wh, not wh)] if relax == 1 else
                    [(q, w, n, b + d) for w in (wh, not wh) for n in (nl, not nl)] if relax == 2 else
                    [(x, w, n, b + d) for x in (q, not q) for w in (wh, not wh) for n in (nl, not nl)])
                for k in keys:
                    cands = self.by_key.get(k)
                    while cands and self.used[cands[-1].behaviour_id]:
                        cands.pop()  # used lists only grow, so drop used requests for good
                    if cands:
                        r = cands.pop()
                        self.used[r.behaviour_id] += 1
                        return r
        # pool exhausted: reuse the least used request with the same question form
        cands = self.by_question[q]
        least = min(self.used[r.behaviour_id] for r in cands)
        r = self.rng.choice([r for r in cands if self.used[r.behaviour_id] == least])
        self.used[r.behaviour_id] += 1
        return r


# ----------------------------------------------------------------------------- composing a split


def _shares(total: int, mix: dict[str, float]) -> dict[str, int]:
    raw = {k: total * v for k, v in mix.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return out


def compose_split(split: str, size: int, harmful: list[Request], benign: list[Request], topic: list[Request],
                  fams: list[Family], trans: list[Transformation], rng: random.Random) -> list[Example]:
    """The rows of one split (see the module docstring for the row types)."""
    n_harm = size // 2
    n_ben = size - n_harm
    hm = _shares(n_harm, HARMFUL_MIX)
    if hm["plain"] > len(harmful):  # each behaviour appears plain at most once; the rest go to the
        hm["comply"] += hm["plain"] - len(harmful)  # comply frame, which evens "transformation present"
        hm["plain"] = len(harmful)
    bm = _shares(n_ben, BENIGN_MIX)
    rows: list[Example] = []
    texts: set[str] = set()

    def add(text: str, label: int, req: Request, family: str, transformation: str, group: str) -> bool:
        if text in texts or UNFILLED_PLACEHOLDER.search(text.replace(req.text, " ")):
            return False
        texts.add(text)
        rows.append(Example(text, label, split, req.source, family, transformation, req.behaviour_id, group))
        return True

    order = harmful[:]
    rng.shuffle(order)
    anchors = [r.text for r in order]  # what benign draws match, for this split

    def fill(n: int, make) -> int:
        """Add up to `n` rows from `make(i)` -> (text, label, request, family, transformation, group),
        retrying on exact duplicates; returns the shortfall."""
        made, tries = 0, 0
        while made < n and tries < 20 * n + 20:
            made += add(*make(tries))  # one index per attempt: cycles advance one step
            tries += 1
        return n - made

    def cyc(items: list):
        shuffled = items[:]
        rng.shuffle(shuffled)
        return lambda i: shuffled[i % len(shuffled)]

    used: Counter = Counter()  # shared: a ShareGPT topic request sits in both pools
    sampler = MatchedSampler(benign, rng, used)
    # The topic pool is small: it may give up question-form matching before reusing a request.
    topic_sampler = MatchedSampler(topic, rng, used, cross_question=True) if topic else sampler

    def benign_req(i: int, topic_share: float = 0.25) -> Request:
        # Benign requests inside jailbreaks/transformations over-sample sensitive topics too.
        s = topic_sampler if rng.random() < topic_share else sampler
        return s.draw(rng.choice(anchors))

    harm = cyc(order)
    fam_of = cyc(fams)
    tr_of = cyc(trans)

    def jailbreak(req: Request, i: int, label: int, group: str):
        fam = fam_of(i)
        return fam.wrap(req.text, rng.randrange(len(fam.variants))), label, req, fam.name, "none", group

    def transform(req: Request, i: int, label: int, mode: str | None, group: str):
        tr = tr_of(i)
        return tr.apply(req.text, mode or rng.choice((INNOCUOUS, COMPLY)), rng), label, req, "none", tr.name, group

    # harmful half; a shortfall (too few distinct rows) passes to the next row type
    short = fill(hm["plain"], lambda i: (harm(i).text, 1, harm(i), "none", "none", "harmful_plain"))
    short = fill(hm["jailbreak"] + short, lambda i: jailbreak(harm(i), i, 1, "harmful_jailbreak"))
    short = fill(hm["comply"] + short, lambda i: transform(harm(i), i, 1, COMPLY, "transform_comply"))
    if short:
        fill(short, lambda i: jailbreak(harm(i), i, 1, "harmful_jailbreak"))

    # benign half: every benign request drawn to match a harmful request's surface
    def plain(s: MatchedSampler, group: str):
        r = s.draw(rng.choice(anchors))
        return r.text, 0, r, "none", "none", group

    short = fill(min(bm["topic"], len(topic)), lambda i: plain(topic_sampler, "benign_topic"))
    short = fill(bm["plain"] + bm["topic"] - min(bm["topic"], len(topic)) + short,
                 lambda i: plain(sampler, "benign_plain"))
    short = fill(bm["jailbreak"] + short, lambda i: jailbreak(benign_req(i), i, 0, "benign_jailbreak"))
    short = fill(bm["innocuous"] + short, lambda i: transform(harm(i), i, 0, INNOCUOUS, "transform_innocuous"))
    fill(bm["transform"] + short, lambda i: transform(benign_req(i), i, 0, None, "benign_transform"))
    if len(rows) != size:
        raise RuntimeError(f"{split}: built {len(rows)} rows, wanted {size}")

    rng.shuffle(rows)
    return rows


# ----------------------------------------------------------------------------- the build


def build_examples(preset: str = "quick", seed: int = 0) -> tuple[list[Example], dict]:
    """All rows of the benchmark and build metadata (screen report, sizes), without writing anything."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    sizes = PRESETS[preset]
    rng = random.Random(f"assay-harmful-intent:{seed}")

    harmful = harmful_requests()
    h_cluster = cluster_near_duplicates([r.text for r in harmful], NEAR_DUP)
    h_split = assign_clusters(h_cluster, SPLIT_FRACTIONS, rng.randrange(2**32))
    by_split: dict[str, list[Request]] = {s: [] for s in SPLITS}
    for r, c in zip(harmful, h_cluster):
        by_split[h_split[c]].append(r)

    # Held-out source for ood: Do-Not-Answer questions, minus near-copies of ID behaviours.
    id_index = ShingleIndex(r.text for s in ("train", "val") for r in by_split[s])
    held_out = 0
    for i, t in enumerate(sources.donotanswer_prompts("malicious_uses")):
        n = normalize_text(t)
        if not id_index.similar(n, NEAR_DUP):
            by_split["ood"].append(Request(n, "donotanswer", f"dna:{i:03d}", True))
            held_out += 1

    report = ScreenReport()
    pool = benign_pool(harmful + by_split["ood"][-held_out:], report)
    b_cluster = cluster_near_duplicates([r.text for r in pool], NEAR_DUP)
    b_split = assign_clusters(b_cluster, SPLIT_FRACTIONS, rng.randrange(2**32))
    benign: dict[str, list[Request]] = {s: [] for s in SPLITS}
    for r, c in zip(pool, b_cluster):
        benign[b_split[c]].append(r)

    # Templated edgy requests: whole templates go to one split.
    tids = sorted({tid for tid, _ in edgy.edgy_requests()})
    t_split = assign_clusters(list(range(len(tids))), SPLIT_FRACTIONS, rng.randrange(2**32))
    t_of = {tid: t_split[i] for i, tid in enumerate(tids)}
    topic: dict[str, list[Request]] = {s: [r for r in benign[s] if r.topic] for s in SPLITS}
    for k, (tid, text) in enumerate(edgy.edgy_requests()):
        topic[t_of[tid]].append(Request(normalize_text(text), "templated_edgy", f"edgy:{tid}:{k:03d}", True))

    rows: list[Example] = []
    for split in SPLITS:
        dist = "ood" if split == "ood" else "id"
        rows += compose_split(split, sizes[split], by_split[split], benign[split], topic[split],
                              families_for(dist), transformations_for(dist),
                              random.Random(f"assay-harmful-intent:{seed}:{split}"))

    inner = {r.behaviour_id: r.text for reqs in (*by_split.values(), *benign.values(), *topic.values())
             for r in reqs}
    leaks = check_leakage(rows)
    if leaks:
        raise RuntimeError(f"behaviour leakage across splits: {leaks[:5]}")
    meta = {
        "harmful_behaviours": {s: len(v) for s, v in by_split.items()},
        "harmful_clusters": len(set(h_cluster)),
        "donotanswer_held_out": held_out,
        "benign_pool": {s: len(v) for s, v in benign.items()},
        "topic_pool": {s: len(v) for s, v in topic.items()},
        "screen": report.as_dict(),
        "screen_examples": report.examples,
        "cross_split_near_duplicates": len(cross_split_near_duplicates(
            {s: sorted({inner[e.behaviour_id] for e in rows if e.split == s}) for s in SPLITS}, NEAR_DUP)),
    }
    return rows, meta


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
