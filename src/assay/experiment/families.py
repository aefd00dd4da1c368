"""Configurations and families, shared by the study's evaluation, its score table, the findings
and `assay experiment recompute`: which rows name one configuration, which configurations are
detailed, and each headline family's configuration chosen on validation (never on another split)."""

from __future__ import annotations

from typing import Any, Callable

from assay.experiment.parts import Run
from assay.experiment.config import SAE_NAMES
from assay.probes.names import KINDS, family_names, in_family, info, label


def sort_key(run: Any) -> tuple:  # by kind, the methods on an SAE after the others
    return (bool(run.sae), KINDS.index(run.kind), run.sae or "", run.method, run.features,
            run.selector or "", run.k or 0, -1 if run.seed is None else run.seed)


def is_primary(run: Any, cfg: Any) -> bool:
    return run.seed is None or run.seed == cfg.seed


CONFIG_FIELDS = ("method", "features", "sae", "k", "selector", "seed")


def same_config(a: Any, b: Any) -> bool:
    """Whether two rows, refs or runs name the same configuration (method, features, SAE, k,
    selector, seed), whatever else they carry (a split, metrics)."""
    return all(getattr(a, f) == getattr(b, f) for f in CONFIG_FIELDS)


def detailed(run: Any, cfg: Any) -> bool:
    """Whether a run's results carry intervals, curves and breakdowns: the primary seed of every
    configuration the tables and findings use (the k-sweep's other k and the extra seeds get point
    metrics)."""
    return is_primary(run, cfg) and (not info(run.method).sweeps_k or run.k == cfg.headline_k)


def to_ref(run: Any) -> Any:
    from assay.report.schema import RowRef

    return RowRef(method=run.method, features=run.features, sae=run.sae, k=run.k, selector=run.selector, seed=run.seed)


def run_of(ref: Any, **override: Any) -> Any:
    """The `Run` a result row, RowRef or dict names (with `override`n fields)."""
    d = ref if isinstance(ref, dict) else ref.model_dump()
    d = {**d, **override}
    return Run(d["method"], d["features"], d.get("sae"), d.get("k"), d.get("selector"), d.get("seed"))


def family_key(family: str, sae: str | None = None, k: int | None = None) -> str:
    """A family's key in `family_best`: its name, k where it sweeps k, the SAE in brackets."""
    return label({"method": family, "k": k, "sae": sae}, sae=" [{}]")


def families(cfg_like: dict[str, Any] | Any) -> dict[str, Callable[[Any], bool]]:
    """Method families of the headline (the names table's), each a predicate over primary result
    rows: the families on the model's activations or the text, then those on each SAE (a family
    that sweeps k at the headline k)."""
    k = cfg_like["headline_k"] if isinstance(cfg_like, dict) else cfg_like.headline_k

    def member(family: str, sae: str | None) -> Callable[[Any], bool]:
        return lambda r: in_family(r.method, family) and r.sae == sae and (r.k == k or not info(r.method).sweeps_k)

    return {family_key(f, sae, k): member(f, sae) for sae in (None, *SAE_NAMES) for f in family_names(sae is not None)}


def family_best(results: list[Any], cfg_like: dict[str, Any] | Any) -> dict[str, Any]:
    """Each family's configuration with the highest *validation* AUROC (primary seed), as a RowRef.
    Ties break on the configuration's name, so the choice never depends on another split."""
    from assay.report.schema import RowRef

    seed = cfg_like["seed"] if isinstance(cfg_like, dict) else cfg_like.seed
    val = [r for r in results if r.split == "val" and r.auroc is not None and r.seed in (None, seed)]
    out = {}
    for fam, member in families(cfg_like).items():
        cands = [r for r in val if member(r)]
        if cands:
            b = max(cands, key=lambda r: (r.auroc, _name(r)))
            out[fam] = RowRef(method=b.method, features=b.features, sae=b.sae, k=b.k, selector=b.selector, seed=b.seed)
    return out


def _name(r: Any) -> str:
    return "/".join(str(v) for v in (r.method, r.features, r.sae, r.k, r.selector))
