"""Method identity as data: each method's name, the report's kind, the headline family it competes
in and whether the study sweeps its k; and the one way a configuration is labelled.

Torch-free (the standard library only), so the report and the findings read it without loading a
probe; `assay.probes.methods` adds each method's probe class and input. Code outside
`assay.probes` asks this table about a method rather than comparing its name with a string.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Name:
    name: str
    kind: str  # the report's grouping (`MethodResult.kind`): one of KINDS
    family: str | None = None  # headline family, named after its first member; None: not in the headline
    sweeps_k: bool = False  # fitted at every k and latent selector the study names
    k: int | None = None  # its fixed number of SAE latents

    @property
    def on_sae(self) -> bool:
        return self.kind.startswith("sae_")


NAMES: dict[str, Name] = {n.name: n for n in (
    Name("dense-logistic", "dense", "dense-logistic"),
    Name("diff-of-means", "dense", "diff-of-means"),
    Name("diff-of-means-std", "dense", "diff-of-means"),
    Name("lda", "dense", "diff-of-means"),
    Name("attention", "attention", "attention"),
    Name("max-rolling-attention", "attention", "attention"),
    Name("token-logistic", "token"),  # monitor candidates, not GDM's methods
    Name("located-logistic", "token"),
    Name("tfidf", "baseline", "tfidf"),
    Name("minilm", "baseline", "minilm"),
    Name("1-sparse", "sae_sparse", "1-sparse", k=1),
    Name("k-sparse", "sae_sparse", "k-sparse", sweeps_k=True),
    Name("reconstruction", "sae_reconstruction", "reconstruction"),
    Name("error", "sae_error", "error"),
)}
# The report's kinds (`report.schema.MethodKind`, which adds "other"): on the model's activations,
# on an SAE's output, then the text baselines.
KINDS = ("dense", "attention", "token", "sae_sparse", "sae_reconstruction", "sae_error", "baseline")
assert {n.kind for n in NAMES.values()} == set(KINDS)
REFERENCE = "dense-logistic"  # the dense probe every other family is compared with


def info(name: str) -> Name:
    """The table's row for `name`; a name it does not know (a report from other code) is kind "other"."""
    return NAMES.get(name) or Name(name, "other")


def family_names(on_sae: bool) -> tuple[str, ...]:
    """The headline families of methods on an SAE's output (`on_sae`) or not, in table order."""
    return tuple(dict.fromkeys(n.family for n in NAMES.values() if n.family and n.on_sae == on_sae))


def in_family(name: str, family: str) -> bool:
    return info(name).family == family


def label(ref: Any, *, features: bool = True, sae: str = " on {}") -> str:
    """How a configuration is named in tables, legends, prose and family keys: the method, k where the
    method sweeps it, the selector, [the features] (unless `features` is false), then the SAE as `sae`
    formats it ("" leaves it out). `ref` has method, k, selector, features and sae as attributes (a
    result row, a RowRef, a Run) or keys; a missing one is left out."""
    get = ref.get if isinstance(ref, dict) else lambda f: getattr(ref, f, None)
    method, k, selector, feats, on = (get(f) for f in ("method", "k", "selector", "features", "sae"))
    text = method + (f" k={k}" if k is not None and info(method).sweeps_k else "")
    text += f" ({selector})" if selector else ""
    text += f" [{feats}]" if features and feats else ""
    return text + (sae.format(on) if on else "")
