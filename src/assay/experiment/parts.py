"""A study's cached parts: every fitted configuration (`Run`) keeps its per-example scores in one
part under `<out>/parts/`, keyed on what it was fitted on *and on the source of the code that
computes it*, so an interrupted study continues where it stopped, a warm rerun only re-evaluates,
and a part computed by older code is recomputed rather than mixed in (a moved or edited module
recomputes its parts once)."""

from __future__ import annotations

import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from assay.fileio import atomic_path, read_json, sha256_json, write_json
from assay.probes.names import info

# Part of every part's key, beside the code fingerprint: bump for changes the code fingerprint
# cannot see (none expected).
STUDY_VERSION = 4

# The code whose numbers every part records; its source is hashed into the part's key, with the
# module of the part's probe class (and the SAE code for a probe on an SAE).
_COMMON = ("assay.experiment.parts", "assay.experiment.runs", "assay.experiment.context", "assay.experiment.config",
           "assay.probes.base", "assay.probes.methods", "assay.probes.names", "assay.probes.inputs",
           "assay.probes.linear", "assay.probes.logistic", "assay.activations.aggregation", "assay.metrics")


def part_code(method: str) -> tuple[str, ...]:
    from assay.probes.methods import METHODS

    m = METHODS[method]
    extra = {"sentence-embedding": ("assay.models.sentence",)}.get(m.reads, ())
    return _COMMON + (m.probe.__module__,) + extra + (("assay.sae.architectures",) if m.reads_sae else ())


@dataclass(frozen=True)
class Run:
    """One fitted configuration: its scores on every example are one cached part."""

    method: str
    features: str  # what it reads, as reports label it (an aggregation, 'tokens:all[-N:]', 'text')
    sae: str | None = None
    k: int | None = None
    selector: str | None = None
    seed: int | None = None

    @property
    def id(self) -> str:
        parts = [self.method, self.features, self.sae, f"k{self.k}" if self.k else None, self.selector,
                 f"s{self.seed}" if self.seed is not None else None]
        return "/".join(p for p in parts if p)

    @property
    def kind(self) -> str:
        return info(self.method).kind

    def without_seed(self) -> "Run":
        return Run(**{**asdict(self), "seed": None})


def run_context(run: Run, data: Any, activations: str, sae_paths: dict[tuple[str, int], Path]) -> dict[str, Any]:
    """What a run's scores depend on besides the run itself and the code: the data, model, layer,
    dtype and activation cache of a study (`data`: its `StudyData`), and the SAE's folder."""
    cfg = data.cfg
    ctx = {"data": data.ds.fingerprint, "model": data.lm.fingerprint, "layer": cfg.layer, "dtype": cfg.dtype,
           "activations": activations}
    if run.kind == "attention":  # its input's max_tokens is in `features`; kept so part keys stay put
        ctx["attention_max_tokens"] = cfg.attention_max_tokens
    if run.sae:
        ctx["sae"] = sae_paths[(run.sae, run.seed)].name
    return ctx


class PartCache:
    """The scores (and fit metadata) of every run, in memory and under `<out>/parts/`.

    `context(run)` is what a run's scores depend on besides the run and the code (data, model,
    layer, dtype, activations, the SAE's folder); `n` the number of examples scored."""

    def __init__(self, out: Path, n: int, context: Callable[[Run], dict[str, Any]]) -> None:
        self.out, self.n, self.context = Path(out), n, context
        self.scores: dict[Run, np.ndarray] = {}
        self.meta: dict[Run, dict[str, Any]] = {}

    def key(self, run: Run) -> str:
        from assay.provenance import code_fingerprint

        code = code_fingerprint(*part_code(run.method))
        return sha256_json([STUDY_VERSION, asdict(run), self.context(run), code])[:12]

    def files(self, run: Run) -> tuple[Path, Path]:
        """(scores .safetensors, metadata .json) of a run's part."""
        stem = f"{re.sub(r'[^A-Za-z0-9+-]+', '_', run.id)}-{self.key(run)}"
        return self.out / "parts" / f"{stem}.safetensors", self.out / "parts" / f"{stem}.json"

    def cached(self, run: Run) -> bool:
        if run in self.scores:
            return True
        scores_file, meta_file = self.files(run)
        if not (meta_file.exists() and scores_file.exists()):
            return False
        from safetensors.torch import load_file

        scores = load_file(str(scores_file))["scores"].numpy()
        if len(scores) != self.n:
            return False
        self.scores[run] = scores
        self.meta[run] = read_json(meta_file)
        return True

    def score(self, run: Run, fit: Callable[[], tuple[np.ndarray, dict[str, Any]]]) -> None:
        """Fit `run` (unless its part is cached) and keep its scores over all examples."""
        if self.cached(run):
            return
        from safetensors.torch import save_file

        from assay.provenance import code_fingerprint, git_commit

        scores, meta = fit()
        scores = np.asarray(scores, dtype=np.float64).ravel()
        meta = _jsonable({**meta, "computed_by": {
            "git_commit": git_commit(), "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "code": code_fingerprint(*part_code(run.method))[:16]}})
        scores_file, meta_file = self.files(run)
        with atomic_path(scores_file) as tmp:
            save_file({"scores": torch.from_numpy(scores)}, str(tmp))
        write_json(meta_file, meta)  # written last: a part is complete when both exist
        self.scores[run], self.meta[run] = scores, meta


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, (np.ndarray, torch.Tensor)):
        return obj.tolist()
    return obj
