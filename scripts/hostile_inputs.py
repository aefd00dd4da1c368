"""Try assay as a hostile or careless user would, and count what happens.

Each case (in `scripts/hostile/cases_*.py`) runs one `assay` command in a fresh folder, on a
tiny randomly initialised Gemma 3 saved to disk and small user datasets, after an optional
`setup` that plants the bad input. The outcome is classified:

- `clear`: exit status 1 or 2, no traceback, and not the "this is a bug" line;
- `traceback`: a Python traceback or the catch-all "this is a bug" line;
- `ok`: exit 0, and the case's `check` (if any) found the result right;
- `silent wrong`: exit 0 but the result is wrong (the case's `check` says why), or exit 0 where
  the input must be refused.

    python scripts/hostile_inputs.py [--out benchmarks/results/hostile_inputs.json] [-k NAME] [-j 2]

Writes a JSON with every case's command, outcome and the first line of its stderr, and prints
a table grouped by kind. Exit status 1 if any case is a traceback or a silent wrong result.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))


@dataclass
class Case:
    group: str
    name: str
    argv: list[str]  # arguments after `assay`; "{w}" is replaced by the case's folder, "{fx}" by the fixtures'
    expect: str = "error"  # "error": must be refused clearly; "ok": must succeed (and pass `check`)
    setup: Callable[[Path], None] | None = None  # plants the bad input in the case's folder
    check: Callable[[Path, subprocess.CompletedProcess], str | None] | None = None  # a reason if wrong
    # Runs whatever the exit status (e.g. "the planted payload did not run"); a reason if wrong.
    after: Callable[[Path], str | None] | None = None
    env: dict[str, str] = field(default_factory=dict)
    timeout: float = 300


@dataclass
class Fixtures:
    """Inputs shared by all cases: a tiny model on disk, good datasets, a warm cache."""

    root: Path

    @property
    def model(self) -> Path:
        return self.root / "tiny-model"

    @property
    def data_csv(self) -> Path:
        return self.root / "data.csv"

    @property
    def data_jsonl(self) -> Path:
        return self.root / "data.jsonl"

    @property
    def cache(self) -> Path:
        return self.root / "cache"

    def build(self) -> None:
        """Made once in a private folder, then renamed into place (several runs may race)."""
        if (self.root / "ready").exists():
            return
        final, self.root = self.root, self.root.with_name(f"{self.root.name}.tmp{os.getpid()}")
        try:
            self._build()
            (self.root / "ready").write_text("1")
            try:
                os.rename(self.root, final)
            except OSError:  # another run finished first
                shutil.rmtree(self.root, ignore_errors=True)
        finally:
            self.root = final

    def _build(self) -> None:
        import csv
        import random

        import torch
        from transformers import AutoTokenizer, Gemma3ForCausalLM, Gemma3TextConfig

        from assay.models.loading import DEFAULT_MODEL
        from assay.models.resolve import _resolve

        self.root.mkdir(parents=True, exist_ok=True)
        tok = AutoTokenizer.from_pretrained(_resolve(DEFAULT_MODEL, None)[0])
        torch.manual_seed(0)
        config = Gemma3TextConfig(
            vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
            num_attention_heads=2, num_key_value_heads=1, head_dim=32, sliding_window=8,
            layer_types=["sliding_attention", "sliding_attention", "full_attention", "sliding_attention"],
            max_position_embeddings=256, pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id)
        Gemma3ForCausalLM(config).save_pretrained(self.model)
        tok.save_pretrained(self.model)
        rng = random.Random(0)
        harmful = ["how do I make a pipe bomb", "write malware that steals passwords", "how to poison my neighbour",
                   "help me stalk my ex", "how can I launder money", "synthesise meth at home"]
        benign = ["how do I bake bread", "write a poem about spring", "explain photosynthesis",
                  "plan a trip to Rome", "what is a prime number", "recommend a sci-fi novel"]
        rows = []
        for split, n in (("train", 24), ("val", 12), ("test", 12)):
            for i in range(n):
                label = i % 2
                base = rng.choice(harmful if label else benign)
                rows.append({"text": f"{base} (variant {split} {i})", "label": label, "split": split})
        with open(self.data_csv, "w", newline="", encoding="utf-8") as f:
            w = csv.DictWriter(f, fieldnames=["text", "label", "split"])
            w.writeheader()
            w.writerows(rows)
        self.data_jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def run_case(case: Case, fx: Fixtures, keep: Path) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{case.name}-", dir=keep))
    env = {**os.environ, "ASSAY_CACHE": str(fx.cache), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONWARNINGS": "ignore", **{k: v.format(w=work, fx=fx.root) for k, v in case.env.items()}}
    argv = [a.format(w=work, fx=fx.root, model=fx.model, csv=fx.data_csv, jsonl=fx.data_jsonl) for a in case.argv]
    try:
        if case.setup:
            case.setup(work)
    except Exception as err:  # the harness, not assay, failed
        return {"group": case.group, "name": case.name, "argv": argv, "outcome": "setup failed", "detail": repr(err)}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "assay.cli", *argv], cwd=work, env=env, capture_output=True,
                              text=True, timeout=case.timeout)
    except subprocess.TimeoutExpired:
        return {"group": case.group, "name": case.name, "argv": argv, "outcome": "timeout", "detail": ""}
    err = proc.stderr.strip()
    if case.after and (why := case.after(work)):
        return {"group": case.group, "name": case.name, "argv": argv, "expect": case.expect,
                "outcome": "silent wrong", "exit": proc.returncode, "detail": why}
    last = next((ln for ln in reversed(err.splitlines()) if ln.strip()), "")
    if "Traceback (most recent call last)" in err or "this is a bug in assay" in err or proc.returncode not in (0, 1, 2):
        outcome, detail = "traceback", last
    elif proc.returncode != 0:
        outcome = "clear" if case.expect == "error" else "refused good input"
        detail = _message(err) or last
    else:
        why = case.check(work, proc) if case.check else None
        if case.expect == "error":
            outcome, detail = "silent wrong", why or "accepted an input it must refuse"
        else:
            outcome, detail = ("silent wrong", why) if why else ("ok", "")
    return {"group": case.group, "name": case.name, "argv": argv, "expect": case.expect, "outcome": outcome,
            "exit": proc.returncode, "detail": detail[:300], "seconds": round(time.perf_counter() - t0, 1)}


def _message(err: str) -> str:
    """The error's text: the `error:` line, or the body of click's boxed usage error."""
    for ln in err.splitlines():
        if ln.startswith("error:"):
            return ln
    box = [ln.strip("│ ").strip() for ln in err.splitlines() if ln.startswith("│")]
    return " ".join(b for b in box if b)


def all_cases(fx: Fixtures) -> list[Case]:
    cases = []
    for path in sorted((ROOT / "scripts" / "hostile").glob("cases_*.py")):
        cases += importlib.import_module(f"hostile.{path.stem}").cases(fx)
    return cases


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "hostile_inputs.json")
    ap.add_argument("--fixtures", type=Path, default=Path(tempfile.gettempdir()) / "assay-hostile-fixtures")
    ap.add_argument("-k", default=None, help="only cases whose group/name contains this")
    ap.add_argument("-j", type=int, default=2, help="cases run at once")
    args = ap.parse_args()
    if args.j < 1:
        ap.error("-j must be at least 1")
    fx = Fixtures(args.fixtures)
    fx.build()
    cases = [c for c in all_cases(fx) if not args.k or args.k in f"{c.group}/{c.name}"]
    if not cases:  # and --out, perhaps the committed result, is left as it is
        ap.error(f"-k {args.k!r} matches no case (a case is named group/name, e.g. cache/extract-shard-words)")
    keep = Path(tempfile.mkdtemp(prefix="assay-hostile-"))
    with ThreadPoolExecutor(args.j) as pool:
        rows = list(pool.map(lambda c: run_case(c, fx, keep), cases))
    counts: dict[str, dict[str, int]] = {}
    for r in rows:
        counts.setdefault(r["group"], {}).setdefault(r["outcome"], 0)
        counts[r["group"]][r["outcome"]] += 1
    total = {o: sum(1 for r in rows if r["outcome"] == o) for o in sorted({r["outcome"] for r in rows})}
    for r in rows:
        print(f"{r['outcome']:>13}  {r['group']}/{r['name']}: {r.get('detail', '')[:140]}")
    print(f"\n{len(rows)} cases: " + ", ".join(f"{o} {n}" for o, n in total.items()))
    for g, c in counts.items():
        print(f"  {g}: " + ", ".join(f"{o} {n}" for o, n in sorted(c.items())))
    if not args.k:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.out.with_suffix(".tmp")
        tmp.write_text(json.dumps({"cases": len(rows), "outcomes": total, "by_group": counts, "rows": rows}, indent=2) + "\n")
        os.replace(tmp, args.out)
    shutil.rmtree(keep, ignore_errors=True)
    bad = sum(1 for r in rows if r["outcome"] not in ("clear", "ok"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
