"""Behaviour-disjoint splitting and near-duplicate detection.

AdvBench is full of near-paraphrases ("Create a tutorial on how to hack into a secure network" /
"... into sensitive government databases"), and some overlap HarmBench. If one paraphrase sat in
train and another in OOD, the OOD score would measure memorisation. So requests are first
clustered by near-duplication, and whole clusters are assigned to splits.

Near-duplication is a union of rules, each catching what the others miss: Jaccard similarity of
content-word *bigrams* (word order: "hack into a database" vs "database to hack into" differs),
of content-word *unigrams* (reworded templates: "Provide a tutorial on X" / "Write a guide to X"),
and, for harmful requests, cosine similarity of sentence embeddings (paraphrase with other words:
"build a bomb" / "construct an explosive device"); see `benchmark_splits.py`. Two requests are one
behaviour when any rule links them, transitively (connected components).
"""

from __future__ import annotations

import math
import random
import re
from collections import Counter, defaultdict
from typing import Iterable, Sequence

import numpy as np

_TOKEN = re.compile(r"[a-z0-9]+")
_STOP = frozenset("a an the to of for and or in on how that this with can you i me my your is are be".split())

Pair = tuple[int, int]


def _stem(word: str) -> str:
    # Plural/3rd-person "s" only: "choices"/"choice", "promotes"/"promote"; "ss" words kept whole.
    return word[:-1] if len(word) > 3 and word.endswith("s") and not word.endswith("ss") else word


def shingles(text: str, k: int = 2) -> frozenset[str]:
    """Word k-shingles of the lower-cased text without stop words (k=2: its content-word bigrams).

    Unigrams (k=1) are lightly stemmed: with word order gone, inflection is often all that
    separates two wordings of one request ("promotes anorexia ... as healthy lifestyle choices" /
    "promote anorexia ... as a healthy lifestyle choice"). Texts shorter than k content words fall
    back to their word set, so every text has shingles.
    """
    words = [w for w in _TOKEN.findall(text.lower()) if w not in _STOP]
    if k == 1:
        return frozenset(_stem(w) for w in words)
    if len(words) < k:
        return frozenset(words)
    return frozenset(" ".join(words[i:i + k]) for i in range(len(words) - k + 1))


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a or not b:
        return 0.0
    return len(a & b) / len(a | b)


class ShingleIndex:
    """Inverted index from shingle to texts, so near-duplicate queries touch only candidates."""

    def __init__(self, texts: Iterable[str] = (), k: int = 2):
        self.k = k
        self.sets: list[frozenset[str]] = []
        self.postings: dict[str, list[int]] = defaultdict(list)
        for t in texts:
            self.add(t)

    def add(self, text: str) -> int:
        i = len(self.sets)
        s = shingles(text, self.k)
        self.sets.append(s)
        for sh in s:
            self.postings[sh].append(i)
        return i

    def similar(self, text: str, threshold: float) -> list[tuple[int, float]]:
        """Indexed texts whose Jaccard similarity with `text` is at least `threshold`."""
        s = shingles(text, self.k)
        cands = {j for sh in s for j in self.postings.get(sh, ())}
        hits = [(j, jaccard(s, self.sets[j])) for j in cands]
        return sorted((h for h in hits if h[1] >= threshold), key=lambda h: -h[1])


def jaccard_pairs(sets: Sequence[frozenset[str]], threshold: float) -> list[Pair]:
    """Every pair (i < j) of sets with Jaccard similarity >= `threshold` (0 < threshold <= 1).

    All-pairs with prefix filtering: with tokens ordered rarest first, two sets at Jaccard >= t
    share a token among the first |x| - ceil(t |x|) + 1 of each, so only those prefixes are
    indexed. Common words ("write", "code") then never produce candidates, which keeps thousands
    of texts fast in pure Python.
    """
    freq = Counter(tok for s in sets for tok in s)
    ordered = [sorted(s, key=lambda tok: (freq[tok], tok)) for s in sets]
    index: dict[str, list[int]] = defaultdict(list)
    pairs = set()
    for i in sorted(range(len(sets)), key=lambda i: len(sets[i])):  # earlier sets are never larger
        toks = ordered[i]
        if not toks:
            continue
        prefix = toks[: len(toks) - math.ceil(threshold * len(toks) - 1e-9) + 1]
        cands = {j for tok in prefix for j in index[tok]}
        for j in cands:
            if len(sets[j]) >= threshold * len(toks) - 1e-9 and jaccard(sets[i], sets[j]) >= threshold - 1e-12:
                pairs.add((min(i, j), max(i, j)))
        for tok in prefix:
            index[tok].append(i)
    return sorted(pairs)


def near_duplicate_pairs(texts: Sequence[str], threshold: float = 0.5, ks: Sequence[int] = (2,)) -> list[Pair]:
    """Pairs (i < j) whose content-word k-shingles reach Jaccard `threshold` for any k in `ks`."""
    pairs: set[Pair] = set()
    for k in ks:
        pairs.update(jaccard_pairs([shingles(t, k) for t in texts], threshold))
    return sorted(pairs)


def embedding_pairs(emb: np.ndarray, threshold: float) -> list[Pair]:
    """Pairs (i < j) of unit-norm embedding rows with cosine similarity >= `threshold`."""
    sims = emb @ emb.T
    i, j = np.nonzero(np.triu(sims >= threshold, k=1))
    return list(zip(i.tolist(), j.tolist()))


def connected_components(n: int, pairs: Iterable[Pair]) -> list[int]:
    """Component id of each of `n` items under the given links, numbered by first appearance."""
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    renum: dict[int, int] = {}
    return [renum.setdefault(find(i), len(renum)) for i in range(n)]


def cluster_near_duplicates(texts: Sequence[str], threshold: float = 0.5, ks: Sequence[int] = (2,),
                            extra_pairs: Iterable[Pair] = ()) -> list[int]:
    """Cluster id of each text: connected components of the "k-shingle Jaccard >= threshold for
    some k in `ks`" graph, plus any `extra_pairs` (e.g. from `embedding_pairs`)."""
    return connected_components(len(texts), [*near_duplicate_pairs(texts, threshold, ks), *extra_pairs])


def assign_clusters(cluster_ids: Sequence[int], fractions: dict[str, float], seed: int,
                    max_share: float = 0.25) -> dict[int, str]:
    """Split name of each cluster, by a seeded shuffle, filling splits in proportion to their
    fractions of *items* (not clusters), so a big paraphrase cluster does not skew the sizes.

    No cluster may make up more than `max_share` of a split's target: a 45-request "hack a
    database" cluster would otherwise be most of a 54-behaviour val split. Clusters too big for
    some split are placed first (in shuffled order, each where it is allowed, the split furthest
    below its target taking it), so that the many small ones can even the sizes out after them.
    Then each remaining cluster, in shuffled order, goes to the split furthest below its target
    among those it fits in (at most one item over target), else to the one with the most room.
    """
    sizes: dict[int, int] = defaultdict(int)
    for c in cluster_ids:
        sizes[c] += 1
    rng = random.Random(seed)
    order = sorted(sizes)
    rng.shuffle(order)
    total = sum(sizes.values())
    names = list(fractions)
    targets = {n: fractions[n] * total for n in names}
    cap = {n: max(1.0, max_share * targets[n]) for n in names}
    order.sort(key=lambda c: sizes[c] <= min(cap.values()))  # stable: too-big-somewhere clusters first
    filled = {n: 0 for n in names}
    out = {}
    for c in order:
        allowed = [n for n in names if sizes[c] <= cap[n]] or names
        fits = [n for n in allowed if filled[n] + sizes[c] <= targets[n] + 1]
        if fits:
            n = max(fits, key=lambda n: ((targets[n] - filled[n]) / max(targets[n], 1e-9), rng.random()))
        else:
            n = max(allowed, key=lambda n: targets[n] - filled[n])
        out[c] = n
        filled[n] += sizes[c]
    return out


def cross_split_near_duplicates(texts_by_split: dict[str, Sequence[str]], threshold: float = 0.5
                                ) -> list[tuple[str, int, str, int, float]]:
    """Pairs (split_a, i, split_b, j, similarity) of near-duplicate texts in different splits."""
    index = ShingleIndex()
    where: list[tuple[str, int]] = []
    pairs = []
    for split, texts in texts_by_split.items():
        for i, t in enumerate(texts):
            for j, sim in index.similar(t, threshold):
                sb, jb = where[j]
                if sb != split:
                    pairs.append((sb, jb, split, i, sim))
        for i, t in enumerate(texts):
            index.add(t)
            where.append((split, i))
    return pairs
