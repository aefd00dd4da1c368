"""Explain and score a dictionary's latents, beside two chance controls and a random-SAE baseline.

What a score is worth is read against:
- `shuffled` (a chance control): every scored latent scored again with another latent's explanation
  (a seeded derangement);
- `unstructured` (a chance control): latents that fire at random, independent of the token, at
  frequencies from 0.005 to 0.8, explained and scored on the same windows;
- `random_sae` (a baseline, not a chance control: a random direction in a residual stream can be
  token-selective): latents of a randomly initialised SAE, explained and scored in the same way.
The two controls must sit at 0.5 (within `CHANCE_MARGIN`); when one does not, the summary says so
(`controls.at_chance`) and nothing may be ranked by it. Dictionaries are compared by their `margin`
over the random SAE, with an interval.

The dictionary's scores are estimated from two samples of its live latents: a uniform one (the
uniform mean) and one drawn in proportion to firing frequency (the frequency-weighted mean);
`latent_ids` given by the caller (e.g. a probe's) are scored and summarised apart.

`autointerp` is the model-free core (token ids and activations in); `autointerp_sae` feeds it from
an SAE, a language model and texts.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from assay.autointerp.explainers import Explainer, Explanation
from assay.autointerp.records import Acts, LatentRecord, collect_records, firing_frequency
from assay.autointerp.scorers import Scorer, score_latent
from assay.autointerp.summary import frequency_bins, means_with_ci, percentile_ci, plot, sampled_means
from assay.errors import InputError

TESTS = ("detection", "fuzzing")
DENSE = 0.1  # a latent firing on more than this fraction of tokens is reported as dense
# How far from 0.5 a chance control may land (detection AUROC) before the run refuses to rank.
CHANCE_MARGIN = 0.05
# Firing rates of the unstructured control's latents (each fires on a token with this probability,
# whatever the token), and how many latents at each.
UNSTRUCTURED_FREQUENCIES = (0.005, 0.02, 0.05, 0.1, 0.3, 0.8)
UNSTRUCTURED_PER_FREQUENCY = 6


def choose_latents(frequency: np.ndarray, n_random: int, given: Sequence[int] = (), seed: int = 0) -> dict[int, str]:
    """`given` latents first (kept even if dead: they are counted as unscorable, never dropped),
    then `n_random` seeded random live latents not already given."""
    n = len(frequency)
    bad = [j for j in given if not 0 <= int(j) < n]
    if bad:
        raise InputError(f"latent ids {bad[:5]} are out of range: this dictionary has {n} latents (0..{n - 1})")
    chosen = {int(j): "given" for j in given}
    live = np.setdiff1d(np.nonzero(frequency > 0)[0], list(chosen))
    pick = np.random.default_rng(seed).choice(live, size=min(n_random, len(live)), replace=False)
    chosen.update({int(j): "random" for j in sorted(pick)})
    return chosen


def frequency_draws(frequency: np.ndarray, n_draws: int, seed: int = 0) -> dict[int, int]:
    """`n_draws` latents drawn with replacement, each with probability proportional to its firing
    frequency: latent id -> how many times it was drawn."""
    f = np.asarray(frequency, float)
    if n_draws < 1 or f.sum() <= 0:
        return {}
    draws = np.random.default_rng(seed).choice(len(f), size=n_draws, replace=True, p=f / f.sum())
    ids, counts = np.unique(draws, return_counts=True)
    return {int(i): int(c) for i, c in zip(ids, counts)}


def unstructured_acts(token_ids: Sequence[torch.Tensor], frequencies: Sequence[float],
                      seed: int = 0) -> Callable[[int], torch.Tensor]:
    """Activations `[t, len(frequencies)]` of document i for latents that fire at random: latent j
    on each token with probability `frequencies[j]`, independent of the token, at a random
    strength. Seeded per document, so a rerun (or a second pass) sees the same activations."""
    p = torch.as_tensor(list(frequencies), dtype=torch.float32)

    def acts(i: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(1_000_003 * (seed + 1) + i)
        t = len(token_ids[i])
        fires = torch.rand(t, len(p), generator=gen) < p
        return fires * (0.5 + torch.rand(t, len(p), generator=gen))

    return acts


def derangement(n: int, rng: np.random.Generator) -> np.ndarray:
    """A permutation with no fixed point (rejection sampling: about e tries); identity for n < 2."""
    if n < 2:
        return np.arange(n)
    while True:
        p = rng.permutation(n)
        if not (p == np.arange(n)).any():
            return p


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _status(rec: LatentRecord) -> str:
    if rec.frequency == 0:
        return "never fires"
    if not rec.scorable:
        return "too few activating windows to hold some out"
    return "scored" if rec.non_activating else "fires in every window (detection scored 0.5)"


def score_records(records: list[LatentRecord], explainer: Explainer, scorer: Scorer, *, run: str, seed: int = 0,
                  shuffle: bool = True, done: dict | None = None, checkpoint: Callable[[list[dict]], None] | None = None,
                  progress: bool = False, draws: dict[int, int] | None = None) -> list[dict[str, Any]]:
    """One row per record: explanation, detection and fuzzing AUROC, whether the latent is in the
    uniform sample (`in_uniform`: its group is "random") and how often the frequency-proportional
    sample drew it (`draws`), and (with `shuffle`) the same scores of another latent's explanation.
    `done` maps latent id -> a row from an earlier run with the same settings, reused instead of
    recomputed."""
    from rich.progress import track

    done, rows = done or {}, []
    rng = np.random.default_rng(seed)
    for rec in track(records, description=f"explaining + scoring ({run})", disable=not progress):
        if rec.latent in done:
            rows.append(done[rec.latent])
            continue
        row = {"run": run, "latent": rec.latent, "group": rec.group, "frequency": rec.frequency,
               "in_uniform": rec.group == "random", "draws": (draws or {}).get(rec.latent, 0),
               "status": _status(rec), "n_activating": len(rec.activating), "n_non_activating": len(rec.non_activating),
               "explanation": None, "explanation_tokens": [], **{t: None for t in TESTS}}
        if rec.scorable:
            e = explainer.explain(rec)
            row.update(explanation=e.text, explanation_tokens=list(e.tokens))
            row.update({t: _finite(v) for t, v in score_latent(scorer, e, rec, rng).items()})
        rows.append(row)
        if checkpoint and len(rows) % 10 == 0:
            checkpoint(rows)
    if shuffle:
        scored = [i for i, r in enumerate(rows) if r["explanation"] is not None]
        perm = derangement(len(scored), np.random.default_rng(seed + 1))
        for i, j in zip(scored, perm):
            other = rows[scored[j]]
            if rows[i].get("shuffled_from") == other["latent"]:
                continue  # reused from an earlier run with the same derangement
            e = Explanation(other["explanation"], tuple(other["explanation_tokens"]))
            rows[i].update(shuffled_from=other["latent"], **{f"shuffled_{t}": _finite(v) for t, v in
                                                              score_latent(scorer, e, records[i], rng).items()})
    return rows


def dictionary_stats(frequency: np.ndarray) -> dict[str, Any]:
    """L0 (= sum of firing frequencies), dead and dense latent counts: the context a score needs."""
    return {"n_latents": int(len(frequency)), "l0": float(frequency.sum()), "dead": int((frequency == 0).sum()),
            f"dense_over_{DENSE}": int((frequency > DENSE).sum())}


def _column(rows: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if r.get(key) is None else r[key] for r in rows], float)


def _run_summary(rows: list[dict], prefix: str = "", seed: int = 0,
                 reps: dict[str, dict[str, np.ndarray]] | None = None) -> dict[str, Any]:
    """Counts by status and, per test, the uniform and frequency-weighted means: estimated from the
    two samples of the dictionary when the rows hold them (`in_uniform`, `draws`), else computed
    over the rows as a fixed set. `reps`, when given, receives the bootstrap replicates per test."""
    f = np.array([r["frequency"] for r in rows], float)
    out: dict[str, Any] = {"n_latents": len(rows), "status": {}}
    for r in rows:
        out["status"][r["status"]] = out["status"].get(r["status"], 0) + 1
    sampled = any(r.get("in_uniform") or r.get("draws") for r in rows)
    for t in TESTS:
        s = _column(rows, prefix + t)
        if sampled:
            uni = s[[bool(r.get("in_uniform")) for r in rows]]
            per_draw = np.repeat(s, [int(r.get("draws") or 0) for r in rows])
            est, rep = sampled_means(uni, per_draw, seed=seed)
            if reps is not None:
                reps[t] = rep
        else:
            est = means_with_ci(s, f, seed=seed)
        out[t] = {**est, "by_frequency": frequency_bins(s, f)}
    return out


def _finite_mean(x: np.ndarray) -> float:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else float("nan")


def _margin(real: dict[str, np.ndarray], base: dict[str, np.ndarray], real_sum: dict, base_sum: dict) -> dict:
    """real - baseline per test and weighting, with a percentile interval from independent
    bootstraps of the two (their latents differ, so nothing pairs them)."""
    out: dict[str, Any] = {}
    for t in TESTS:
        if t not in real or t not in base:
            continue
        m: dict[str, Any] = {}
        for w in ("uniform", "weighted"):
            a, b = real[t][w], base[t][w]
            n = min(len(a), len(b))
            m[w] = float(real_sum[t][w] - base_sum[t][w])
            m[f"{w}_ci"] = percentile_ci(a[:n] - b[:n]) if n else [float("nan")] * 2
        out[t] = m
    return out


def chance_check(runs: dict[str, Any], margin: float = CHANCE_MARGIN) -> dict[str, Any]:
    """Whether the chance controls' detection scores sit within `margin` of 0.5: `shuffled`
    (uniform and frequency-weighted) and `unstructured` (over its latents); what is off, if any."""
    checks = {}
    if "shuffled" in runs:
        for w in ("uniform", "weighted"):
            checks[f"shuffled_{w}"] = runs["shuffled"]["detection"].get(w)
    if "unstructured" in runs:
        checks["unstructured_uniform"] = runs["unstructured"]["detection"].get("uniform")
        # the same, over only the latents that have a silent window (the others score 0.5 by rule)
        checks["unstructured_with_negatives"] = runs["unstructured"]["with_negatives"]["detection"].get("uniform")
    off = {k: v for k, v in checks.items() if v is None or not math.isfinite(v) or abs(v - 0.5) > margin}
    return {"margin": margin, "values": checks, "off_chance": sorted(off), "at_chance": bool(checks) and not off}


def autointerp(
    token_ids: Sequence[torch.Tensor],
    acts: Acts,
    explainer: Explainer,
    scorer: Scorer,
    *,
    latent_ids: Sequence[int] = (),
    n_random: int = 50,
    control_acts: Acts | None = None,
    make_control: Callable[[np.ndarray], Acts] | None = None,
    unstructured: bool = True,
    out_dir: str | Path | None = None,
    seed: int = 0,
    ctx_len: int = 32,
    n_explain: int = 20,
    n_quantiles: int = 10,
    per_quantile: int = 2,
    fingerprint: Any = None,
    meta: dict[str, Any] | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """Explain and score `latent_ids`, `n_random` uniformly drawn live latents and `n_random` draws
    in proportion to frequency, of the dictionary whose per-document activations `acts` gives; with
    the shuffled and (with `unstructured`) unstructured chance controls; `control_acts` (a random
    SAE's activations on the same tokens) or `make_control` (a function of this dictionary's firing
    frequencies returning them, to match its frequency profile; called only if the run is not
    already finished) adds the random_sae baseline and the margin over it. Returns the summary; with `out_dir` also writes scores.jsonl, summary.json and
    autointerp.png there. With a `fingerprint` of the inputs, a rerun reuses finished latents."""
    from assay.fileio import sha256_json, write_json, write_text
    from assay.provenance import code_fingerprint, provenance

    if control_acts is not None and make_control is not None:
        raise InputError("give control_acts or make_control, not both")
    settings = {"explainer": explainer.name, "explainer_settings": explainer.settings(), "scorer": scorer.name,
                "scorer_settings": scorer.settings(), "ctx_len": ctx_len, "n_explain": n_explain,
                "n_quantiles": n_quantiles, "per_quantile": per_quantile, "seed": seed, "chance_margin": CHANCE_MARGIN,
                "unstructured": list(UNSTRUCTURED_FREQUENCIES) if unstructured else None,
                "unstructured_per_frequency": UNSTRUCTURED_PER_FREQUENCY}
    out = Path(out_dir) if out_dir is not None else None
    # the code is in the key too: a finished run's rows and summary are reused as they are
    key = None if fingerprint is None else sha256_json([fingerprint, settings, list(latent_ids), n_random,
                                                        code_fingerprint("assay.autointerp")])[:16]
    finished = _finished_summary(out, key)
    if finished is not None:
        return finished
    done = _earlier_rows(out, key)
    rows: dict[str, list[dict]] = {}

    def save(partial: list[dict] | None = None, run: str | None = None) -> None:
        if out is None:
            return
        every = [r for name, rs in rows.items() if name != run for r in rs] + (partial or [])
        write_text(out / "scores.jsonl", "".join(json.dumps({**r, "key": key}) + "\n" for r in every))

    def scored(run: str, records: list[LatentRecord], **kw: Any) -> list[dict]:
        rows[run] = score_records(records, explainer, scorer, run=run, seed=seed, done=done.get(run),
                                  checkpoint=lambda rs: save(rs, run), progress=progress, **kw)
        save()
        return rows[run]

    kw = dict(ctx_len=ctx_len, n_explain=n_explain, n_quantiles=n_quantiles, per_quantile=per_quantile, seed=seed,
              progress=progress)
    freq = firing_frequency(token_ids, acts, progress)
    latents = choose_latents(freq, n_random, latent_ids, seed)
    draws = frequency_draws(freq, n_random, seed + 3)
    latents.update({j: "frequency" for j in draws if j not in latents})
    scored("real", collect_records(token_ids, acts, latents, freq, **kw), draws=draws)
    reps: dict[str, dict] = {"real": {}}
    runs = {"real": _run_summary(rows["real"], seed=seed, reps=reps["real"]),
            "shuffled": _run_summary(rows["real"], "shuffled_", seed)}
    runs["real"]["by_group"] = {g: _run_summary([{**r, "in_uniform": False, "draws": 0} for r in rows["real"]
                                                 if r["group"] == g], seed=seed)
                                for g in sorted({r["group"] for r in rows["real"]})}
    dictionaries = {"real": dictionary_stats(freq)}
    if unstructured:
        ufreq = np.repeat(UNSTRUCTURED_FREQUENCIES, UNSTRUCTURED_PER_FREQUENCY)
        uacts = unstructured_acts(token_ids, ufreq, seed)
        umeasured = firing_frequency(token_ids, uacts)
        urows = scored("unstructured", collect_records(token_ids, uacts, {j: "unstructured" for j in range(len(ufreq))},
                                                       umeasured, **kw), shuffle=False)
        runs["unstructured"] = _run_summary(urows, seed=seed)
        runs["unstructured"]["with_negatives"] = _run_summary([r for r in urows if r["status"] == "scored"], seed=seed)
        runs["unstructured"]["by_rate"] = [
            {"rate": float(p), **{t: _finite_mean(_column([r for r, q in zip(urows, ufreq) if q == p], t)) for t in TESTS}}
            for p in UNSTRUCTURED_FREQUENCIES]
    if control_acts is not None or make_control is not None:
        cacts = control_acts if control_acts is not None else make_control(freq)
        cfreq = firing_frequency(token_ids, cacts, progress)
        dictionaries["random_sae"] = dictionary_stats(cfreq)
        clatents = {j: "random" for j in choose_latents(cfreq, n_random, (), seed + 7)}
        cdraws = frequency_draws(cfreq, n_random, seed + 11)
        clatents.update({j: "frequency" for j in cdraws if j not in clatents})
        scored("random_sae", collect_records(token_ids, cacts, clatents, cfreq, **kw), shuffle=False, draws=cdraws)
        reps["random_sae"] = {}
        runs["random_sae"] = _run_summary(rows["random_sae"], seed=seed + 5, reps=reps["random_sae"])
        if not clatents:
            runs["random_sae"]["note"] = "no latent of the random SAE fires on these tokens: nothing to score"
        elif reps["real"] and reps["random_sae"]:
            runs["margin"] = _margin(reps["real"], reps["random_sae"], runs["real"], runs["random_sae"])
    controls = chance_check(runs)
    summary = {"settings": settings, "dictionaries": dictionaries, "runs": runs, "controls": controls, "key": key,
               **(meta or {})}
    if out is not None:
        summary = provenance(**summary)
        series = {name: (rows[run], p) for name, run, p in (("real", "real", ""), ("shuffled", "real", "shuffled_"),
                                                            ("unstructured", "unstructured", ""),
                                                            ("random_sae", "random_sae", "")) if run in rows}
        plot({name: {"frequency": [r["frequency"] for r in rs], "summary": runs[name],
                     **{t: [np.nan if r.get(p + t) is None else r[p + t] for r in rs] for t in TESTS}}
              for name, (rs, p) in series.items()}, out / "autointerp.png",
             f"{explainer.name} explainer, {scorer.name} scorer (dashed: uniform mean, solid: frequency-weighted)")
        write_json(out / "summary.json", summary)  # last: its key marks the run finished
    return summary


def _finished_summary(out: Path | None, key: str | None) -> dict[str, Any] | None:
    """The summary of a finished earlier run with the same inputs and settings (`key`), as it was
    written: a rerun then skips encoding every document again (most of a warm study's auto-interp
    stage). None when there is none or it is unreadable."""
    from assay.fileio import read_json

    if out is None or key is None or not (out / "summary.json").exists() or not (out / "autointerp.png").exists():
        return None
    try:
        summary = read_json(out / "summary.json")
    except ValueError:
        return None
    return summary if isinstance(summary, dict) and summary.get("key") == key else None


def _earlier_rows(out: Path | None, key: str | None) -> dict[str, dict[int, dict]]:
    """Rows of an interrupted or finished earlier run with the same inputs and settings."""
    if out is None or key is None or not (out / "scores.jsonl").exists():
        return {}
    found: dict[str, dict[int, dict]] = {}
    for line in (out / "scores.jsonl").read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
        except json.JSONDecodeError:
            continue
        if r.pop("key", None) == key:
            found.setdefault(r["run"], {})[r["latent"]] = r
    return found
