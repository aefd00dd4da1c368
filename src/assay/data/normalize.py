"""Formatting normalisation of request texts, applied to both classes before any wrapping.

GDM found surface cues separating their classes (only benign prompts were questions; brackets at
the end). The two sources here differ the same way: HarmBench/AdvBench are tidy imperatives
without a final full stop, ShareGPT prompts have curly quotes, stray spaces, lower-case starts,
trailing dots or none. Normalising removes the formatting half of that; the sampler in
`benchmark.py` matches the rest (question form, length).
"""

from __future__ import annotations

import re
import unicodedata

_QUOTES = str.maketrans({"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u00ab": '"', "\u00bb": '"',
                         "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u2032": "'", "\u00b4": "'",
                         "\u2013": "-", "\u2014": " - ", "\u2026": "...", "\u00a0": " ", "\u200b": ""})
_SPACES = re.compile(r"[ \t\f\v]+")
_MANY_NEWLINES = re.compile(r"\n{3,}")
_SPACE_NEWLINE = re.compile(r" *\n *")
_TRAIL_PUNCT = re.compile(r"[\s.!;,]+$")
_SPACE_BEFORE_PUNCT = re.compile(r" +([?.!,;:])(?=\s|$)")


def normalize_text(text: str) -> str:
    """Canonical formatting of one request.

    - Unicode NFC, curly quotes/dashes/ellipsis to ASCII, non-breaking and zero-width spaces removed;
    - runs of spaces collapsed, spaces around newlines dropped, at most one blank line;
    - first letter upper-case;
    - the ending made uniform: trailing `.`/`!`/`;`/`,` runs and spaces removed, then one `.` added
      unless the text ends in `?` or a closing bracket/quote/code character (a question keeps its
      question mark: question form is balanced by sampling, not erased).
    """
    t = unicodedata.normalize("NFC", text).translate(_QUOTES)
    t = t.replace("\r\n", "\n").replace("\r", "\n")
    t = _SPACES.sub(" ", t)
    t = _SPACE_NEWLINE.sub("\n", t)
    t = _MANY_NEWLINES.sub("\n\n", t).strip()
    t = _SPACE_BEFORE_PUNCT.sub(r"\1", t)
    if t.endswith("..."):  # ellipsis: "continue..." reads as a trailing-off, treat as a full stop
        t = t.rstrip(".")
    t = _TRAIL_PUNCT.sub("", t)
    if not t:
        return t
    if t[-1].isalnum() or t[-1] in "'\"%":
        t += "."
    for i, ch in enumerate(t):  # capitalise the first letter, skipping leading quotes/bullets
        if ch.isalpha():
            t = t[:i] + ch.upper() + t[i + 1:]
            break
        if ch not in "\"'*-([ ":
            break
    return t


def strip_final_punct(text: str) -> str:
    """`text` without its final `.`/`?`/`!`, for embedding mid-sentence in a template."""
    return text.rstrip().rstrip(".?!").rstrip()


def lower_first(text: str) -> str:
    """First character lower-cased unless the first word looks like an acronym or a name with caps."""
    word = text.split(" ", 1)[0]
    if len(word) > 1 and (word.isupper() or any(c.isupper() for c in word[1:])):
        return text
    return text[:1].lower() + text[1:]
