"""Compose one split's rows from its requests: each row type's share, benign requests drawn to match
the harmful ones' surface, and the jailbreak and transformation wrapping."""

from __future__ import annotations

import random
from collections import Counter, defaultdict

from assay.data.benchmark_requests import Request
from assay.data.dataset import Example
from assay.data.jailbreaks import UNFILLED_PLACEHOLDER, Family
from assay.data.transforms import COMPLY, INNOCUOUS, Transformation

# Shares of each class's half of a split. The jailbreak and transformation shares are close across
# classes so that neither "jailbreak present" nor "transformation present" predicts the label.
HARMFUL_MIX = {"plain": 0.30, "jailbreak": 0.50, "comply": 0.20}
BENIGN_MIX = {"plain": 0.10, "topic": 0.10, "jailbreak": 0.45, "innocuous": 0.20, "transform": 0.15}

_LEN_EDGES = (50, 75, 100, 130, 170, 230, 320, 450)


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


def _shares(total: int, mix: dict[str, float]) -> dict[str, int]:
    raw = {k: total * v for k, v in mix.items()}
    out = {k: int(v) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: raw[k] - out[k], reverse=True)[: total - sum(out.values())]:
        out[k] += 1
    return out


def compose_split(split: str, size: int, harmful: list[Request], benign: list[Request], topic: list[Request],
                  fams: list[Family], trans: list[Transformation], rng: random.Random) -> list[Example]:
    """The rows of one split (see `assay.data.benchmark`'s docstring for the row types)."""
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
        rows.append(Example(text, label, split, req.source, family, transformation, req.behaviour_id, group,
                            req.cluster))
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
    comply_of = cyc([t for t in trans if t.has_comply])  # ignore_one is only ever innocuous

    def shifted(i: int) -> int:
        # Attempt i wraps behaviour i % n; pass k = i // n over the behaviours gives it the family
        # (or transformation) k steps further on, so each behaviour meets every family in turn.
        # Cycling both with i would pair each behaviour with one family only whenever n shares a
        # factor with the number of families, and the retries (all exact duplicates) would fall
        # to GCG, the one family with many variants.
        return i % len(order) + i // len(order)

    def jailbreak(req: Request, i: int, label: int, group: str):
        fam = fam_of(i)
        return fam.wrap(req.text, rng.randrange(len(fam.variants))), label, req, fam.name, "none", group

    def transform(req: Request, i: int, label: int, mode: str | None, group: str):
        tr = comply_of(i) if mode == COMPLY else tr_of(i)
        return tr.apply(req.text, mode or rng.choice(tr.modes), rng), label, req, "none", tr.name, group

    # harmful half; a shortfall (too few distinct rows) passes to the next row type
    short = fill(hm["plain"], lambda i: (harm(i).text, 1, harm(i), "none", "none", "harmful_plain"))
    short = fill(hm["jailbreak"] + short, lambda i: jailbreak(harm(i), shifted(i), 1, "harmful_jailbreak"))
    short = fill(hm["comply"] + short, lambda i: transform(harm(i), shifted(i), 1, COMPLY, "transform_comply"))
    if short:
        fill(short, lambda i: jailbreak(harm(i), shifted(i), 1, "harmful_jailbreak"))

    # benign half: every benign request drawn to match a harmful request's surface
    def plain(s: MatchedSampler, group: str):
        r = s.draw(rng.choice(anchors))
        return r.text, 0, r, "none", "none", group

    short = fill(min(bm["topic"], len(topic)), lambda i: plain(topic_sampler, "benign_topic"))
    short = fill(bm["plain"] + bm["topic"] - min(bm["topic"], len(topic)) + short,
                 lambda i: plain(sampler, "benign_plain"))
    short = fill(bm["jailbreak"] + short, lambda i: jailbreak(benign_req(i), i, 0, "benign_jailbreak"))
    short = fill(bm["innocuous"] + short, lambda i: transform(harm(i), shifted(i), 0, INNOCUOUS, "transform_innocuous"))
    fill(bm["transform"] + short, lambda i: transform(benign_req(i), i, 0, None, "benign_transform"))
    if len(rows) != size:
        raise RuntimeError(f"{split}: built {len(rows)} rows, wanted {size}")

    rng.shuffle(rows)
    return rows
