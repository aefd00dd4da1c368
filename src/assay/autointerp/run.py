"""Explain and score a dictionary's latents, with the two controls that give a score its chance level.

- shuffled: every scored latent is scored again with another latent's explanation (a seeded
  derangement), which is what the scorer gives an explanation that is not about this latent;
- random_sae: latents of a randomly initialised SAE of the same architecture and width, explained
  and scored in the same way, which is what the pipeline finds in structure-free latents (a
  random direction still fires on some tokens more than others).

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
from assay.autointerp.summary import frequency_bins, means_with_ci, plot
from assay.errors import InputError

TESTS = ("detection", "fuzzing")
DENSE = 0.1  # a latent firing on more than this fraction of tokens is reported as dense


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
    return "scored" if rec.scorable else "too few activating windows to hold some out"


def score_records(records: list[LatentRecord], explainer: Explainer, scorer: Scorer, *, run: str, seed: int = 0,
                  shuffle: bool = True, done: dict | None = None, checkpoint: Callable[[list[dict]], None] | None = None,
                  progress: bool = False) -> list[dict[str, Any]]:
    """One row per record: explanation, detection and fuzzing AUROC, and (with `shuffle`) the same
    scores of another latent's explanation. `done` maps latent id -> a row from an earlier run
    with the same settings, reused instead of recomputed."""
    from rich.progress import track

    done, rows = done or {}, []
    rng = np.random.default_rng(seed)
    for rec in track(records, description=f"explaining + scoring ({run})", disable=not progress):
        if rec.latent in done:
            rows.append(done[rec.latent])
            continue
        row = {"run": run, "latent": rec.latent, "group": rec.group, "frequency": rec.frequency,
               "status": _status(rec), "n_activating": len(rec.activating), "n_non_activating": len(rec.non_activating),
               "weak_negatives": rec.weak_negatives, "explanation": None, "explanation_tokens": [],
               **{t: None for t in TESTS}}
        if rec.scorable:
            e = explainer.explain(rec)
            row.update(explanation=e.text, explanation_tokens=list(e.tokens))
            row.update({t: _finite(v) for t, v in score_latent(scorer, e, rec, rng).items()})
        rows.append(row)
        if checkpoint and len(rows) % 10 == 0:
            checkpoint(rows)
    if shuffle:
        scored = [i for i, r in enumerate(rows) if r["status"] == "scored"]
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


def _run_summary(rows: list[dict], prefix: str = "", seed: int = 0) -> dict[str, Any]:
    f = np.array([r["frequency"] for r in rows], float)
    out: dict[str, Any] = {"n_latents": len(rows), "status": {}}
    for r in rows:
        out["status"][r["status"]] = out["status"].get(r["status"], 0) + 1
    for t in TESTS:
        s = np.array([np.nan if r.get(prefix + t) is None else r[prefix + t] for r in rows], float)
        out[t] = {**means_with_ci(s, f, seed=seed), "by_frequency": frequency_bins(s, f)}
    return out


def autointerp(
    token_ids: Sequence[torch.Tensor],
    acts: Acts,
    explainer: Explainer,
    scorer: Scorer,
    *,
    latent_ids: Sequence[int] = (),
    n_random: int = 50,
    control_acts: Acts | None = None,
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
    """Explain and score `latent_ids` plus `n_random` random live latents of the dictionary whose
    per-document activations `acts` gives; `control_acts` (a random SAE on the same tokens) adds the
    random_sae control. Returns the summary; with `out_dir` also writes scores.jsonl, summary.json
    and autointerp.png there. With a `fingerprint` of the inputs, a rerun reuses finished latents."""
    from assay.fileio import sha256_json, write_json, write_text
    from assay.provenance import code_fingerprint, provenance

    settings = {"explainer": explainer.name, "explainer_settings": explainer.settings(), "scorer": scorer.name,
                "scorer_settings": scorer.settings(), "ctx_len": ctx_len, "n_explain": n_explain,
                "n_quantiles": n_quantiles, "per_quantile": per_quantile, "seed": seed}
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

    kw = dict(ctx_len=ctx_len, n_explain=n_explain, n_quantiles=n_quantiles, per_quantile=per_quantile, seed=seed,
              progress=progress)
    freq = firing_frequency(token_ids, acts, progress)
    latents = choose_latents(freq, n_random, latent_ids, seed)
    records = collect_records(token_ids, acts, latents, freq, **kw)
    rows["real"] = score_records(records, explainer, scorer, run="real", seed=seed, done=done.get("real"),
                                 checkpoint=lambda rs: save(rs, "real"), progress=progress)
    save()
    runs = {"real": _run_summary(rows["real"], seed=seed), "shuffled": _run_summary(rows["real"], "shuffled_", seed)}
    runs["real"]["by_group"] = {g: _run_summary([r for r in rows["real"] if r["group"] == g], seed=seed)
                                for g in sorted({r["group"] for r in rows["real"]})}
    dictionaries = {"real": dictionary_stats(freq)}
    if control_acts is not None:
        cfreq = firing_frequency(token_ids, control_acts, progress)
        dictionaries["random_sae"] = dictionary_stats(cfreq)
        clatents = {j: "random_sae" for j in choose_latents(cfreq, len(latents), (), seed + 7)}
        crecords = collect_records(token_ids, control_acts, clatents, cfreq, **kw)
        rows["random_sae"] = score_records(crecords, explainer, scorer, run="random_sae", seed=seed, shuffle=False,
                                           done=done.get("random_sae"), checkpoint=lambda rs: save(rs, "random_sae"),
                                           progress=progress)
        save()
        runs["random_sae"] = _run_summary(rows["random_sae"], seed=seed)
        runs["random_sae"]["requested"] = len(latents)
        if not clatents:
            runs["random_sae"]["note"] = "no latent of the random SAE fires on these tokens: nothing to score"
    summary = {"settings": settings, "dictionaries": dictionaries, "runs": runs, "key": key, **(meta or {})}
    if out is not None:
        summary = provenance(**summary)
        series = {"real": (rows["real"], ""), "shuffled": (rows["real"], "shuffled_")}
        if "random_sae" in rows:
            series["random_sae"] = (rows["random_sae"], "")
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
