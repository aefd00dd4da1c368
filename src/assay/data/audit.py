"""Surface-cue audit: how well does one shallow feature of the text separate the classes?

GDM found that a "question mark" SAE latent separated their classes because only benign prompts
were questions. This audit measures every such cue directly: per split, the AUROC of each single
cue as a score for "harmful". 0.5 is no signal; the signed AUROC says which way it points
(below 0.5: the cue marks *benign*); strength = max(auc, 1 - auc).
"""

from __future__ import annotations

import re
from typing import Callable


from assay.data.dataset import Dataset, Example
from assay.data.screen import topic_words
from assay.metrics import auroc

_WH = re.compile(r"^\W*(?:what|why|how|when|where|who|whom|whose|which|can|could|would|should|is|are|do|does)\b",
                 re.IGNORECASE)
_BRACKETS = ")]}>"


def _last_char(t: str) -> str:
    t = t.rstrip()
    return t[-1] if t else ""


CUES: dict[str, Callable[[Example], float]] = {
    "ends_with_question_mark": lambda e: float(_last_char(e.text) == "?"),
    "contains_question_mark": lambda e: float("?" in e.text),
    "ends_with_bracket": lambda e: float(_last_char(e.text) in _BRACKETS or _last_char(e.text) == "["),
    "ends_with_period": lambda e: float(_last_char(e.text) == "."),
    "n_chars": lambda e: float(len(e.text)),
    "n_words": lambda e: float(len(e.text.split())),
    "n_newlines": lambda e: float(e.text.count("\n")),
    "starts_upper": lambda e: float(e.text.lstrip()[:1].isupper()),
    "upper_ratio": lambda e: sum(c.isupper() for c in e.text) / max(1, sum(c.isalpha() for c in e.text)),
    "non_ascii_ratio": lambda e: sum(not c.isascii() for c in e.text) / max(1, len(e.text)),
    "leading_wh_word": lambda e: float(bool(_WH.match(e.text))),
    "topic_word_count": lambda e: float(len(topic_words(e.text))),
    "any_topic_word": lambda e: float(bool(topic_words(e.text))),
    "jailbreak_present": lambda e: float(e.family != "none"),
    "transformation_present": lambda e: float(e.transformation != "none"),
}

WARN_AT = 0.70  # strength at which the card flags a cue


def cue_audit(ds: Dataset) -> dict[str, dict[str, float]]:
    """{split: {cue: signed AUROC for "harmful"}}."""
    out = {}
    for split in ds.splits:
        sub = ds.split(split)
        y = sub.labels
        out[split] = {name: round(auroc([f(e) for e in sub], y), 4) for name, f in CUES.items()}
    return out


def strength(auc: float) -> float:
    return max(auc, 1 - auc)


def audit_table(audit: dict[str, dict[str, float]]) -> str:
    """Markdown table: one row per cue, one column per split, signed AUROC (strength flagged)."""
    splits = list(audit)
    lines = ["| cue | " + " | ".join(splits) + " | max strength |", "|---|" + "---|" * (len(splits) + 1)]
    for cue in CUES:
        cells, worst = [], 0.0
        for s in splits:
            a = audit[s][cue]
            st = strength(a)
            worst = max(worst, st)
            cells.append(f"**{a:.3f}**" if st >= WARN_AT else f"{a:.3f}")
        lines.append(f"| {cue} | " + " | ".join(cells) + f" | {worst:.3f} |")
    return "\n".join(lines)
