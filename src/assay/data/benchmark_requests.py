"""The benchmark's requests before any wrapping: read from the sources, normalised and screened, and
rebuilt from the sources for a built dataset's behaviour ids."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from assay.data import donotanswer, edgy, sources
from assay.data.dataset import Dataset
from assay.data.normalize import normalize_text
from assay.data.screen import ScreenReport, format_reason, harm_reason, topic_words
from assay.data.splits import ShingleIndex

NEAR_DUP = 0.5  # Jaccard of content-word unigrams or bigrams at or above which two requests are one behaviour
BENIGN_CHARS = (20, 600)


@dataclass(frozen=True)
class Request:
    """A request before wrapping: normalised text, where it came from, its behaviour id, and its
    near-duplicate cluster (set when splits are assigned)."""

    text: str
    source: str
    behaviour_id: str
    topic: bool = False
    cluster: str = ""


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


def donotanswer_requests() -> tuple[list[Request], list[dict]]:
    """Do-Not-Answer "malicious uses" prompts that pass the intent screen (normalised), and the
    dropped ones with their reason (see `donotanswer.py`)."""
    kept, dropped = donotanswer.screen(sources.donotanswer_prompts("malicious_uses"))
    return [Request(normalize_text(t), "donotanswer", f"dna:{i:03d}", True) for i, t in kept], dropped


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


def request_texts(ds: Dataset) -> dict[str, str]:
    """The normalised request behind each behaviour id of `ds` (its text before any jailbreak or
    transformation), rebuilt from the sources: every row maps back to one, wrapped or not."""
    ids = {e.behaviour_id for e in ds}
    out = {r.behaviour_id: r.text for r in harmful_requests() if r.behaviour_id in ids}
    dna = sources.donotanswer_prompts("malicious_uses")
    edgy_texts = edgy.edgy_requests()
    for b in ids:
        kind, _, rest = b.partition(":")
        if kind == "dna":
            out[b] = normalize_text(dna[int(rest)])
        elif kind == "edgy":
            out[b] = normalize_text(edgy_texts[int(rest.rsplit(":", 1)[1])][1])
    wanted = {b.partition(":")[2] for b in ids if b.startswith("sharegpt:")}
    out.update((f"sharegpt:{rid}", normalize_text(text)) for rid, text in _sharegpt_first_turns(wanted).items())
    return out


def _sharegpt_first_turns(ids: set[str]) -> dict[str, str]:
    """Raw first user turn of the ShareGPT records with these ids (as `_benign_pool` reads them)."""
    out: dict[str, str] = {}
    for n, rec in enumerate(sources.iter_sharegpt_records(), 1):
        rid = str(rec.get("id", n))
        conv = rec.get("conversations") or []
        if rid in ids and rid not in out and conv and str(conv[0].get("from", "")).lower() in ("human", "user") \
                and isinstance(conv[0].get("value"), str):
            out[rid] = conv[0]["value"]
    return out


def sharegpt_requests(ds: Dataset) -> frozenset[str]:
    """The normalised ShareGPT requests `ds` uses, plain, wrapped in a jailbreak or transformed:
    what an SAE corpus must leave out (`assay.sae.corpus`'s `exclude`) so that no benchmark prompt
    was seen in SAE training."""
    texts = request_texts(Dataset([e for e in ds if e.behaviour_id.startswith("sharegpt:")]))
    return frozenset(texts.values())
