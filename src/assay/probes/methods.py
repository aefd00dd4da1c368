"""The one registry of methods, under the paper's names: what each fits and what it reads.

Every caller that names a method uses this table or, without torch, its names table
(`assay.probes.names`: kind, family, k): the study's loop, `assay probe train`, the report's
tables, plots and findings, the debugger and the monitor. A method is a probe class, the
configuration that distinguishes it (`diff-of-means` and `lda` are one class), and the input it
reads (`assay.probes.inputs` turns that into tensors):

- `pooled`: one vector per prompt, an aggregation of the residual stream (`all.max`, `resp-5`, ...)
- `tokens`: the residual stream at every real token, with a mask (attention and token-level probes)
- `sae-latents` / `sae-reconstruction` / `sae-error`: an SAE's output per token, pooled alike
- `text`: the prompt itself; `sentence-embedding`: MiniLM's embedding of it (text baselines)
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from assay.errors import InputError
from assay.probes.attention import AttentionProbe, RollingAttentionProbe
from assay.probes.base import Probe
from assay.probes.linear import DiffMeanProbe, LogisticProbe
from assay.probes.names import NAMES
from assay.probes.sparse import KSparseProbe, OneSparseProbe
from assay.probes.tfidf import TfidfProbe
from assay.probes.token import LocatedLogisticProbe, TokenLogisticProbe

READS = ("pooled", "tokens", "sae-latents", "sae-reconstruction", "sae-error", "text", "sentence-embedding")


@dataclass(frozen=True)
class Method:
    name: str
    probe: type[Probe]
    reads: str
    summary: str
    defaults: dict[str, Any] = field(default_factory=dict)  # config that sets this method apart
    seeded: bool = False  # stochastic fit: the study repeats it per seed
    study: bool = True  # run by `assay experiment harmful-intent` by default (GDM's comparison)
    token_sample: bool = False  # fits on a sample of single tokens (a build may pass a pre-drawn one)

    @property
    def kind(self) -> str:
        """The report's grouping, from the names table (`assay.probes.names`)."""
        return NAMES[self.name].kind

    @property
    def reads_sae(self) -> bool:
        return self.reads.startswith("sae-")

    @property
    def sae_output(self) -> str | None:
        """latents | reconstruction | error for a method on an SAE, else None."""
        return self.reads.removeprefix("sae-") if self.reads_sae else None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("dense-logistic", LogisticProbe, "pooled",
           "logistic regression on pooled activations, L2 strength chosen on validation"),
    Method("diff-of-means", DiffMeanProbe, "pooled", "projection on the raw class-mean difference",
           {"normalize": "none"}),
    Method("diff-of-means-std", DiffMeanProbe, "pooled", "class-mean difference of standardised activations",
           {"normalize": "standardize"}),
    Method("lda", DiffMeanProbe, "pooled", "class-mean difference after whitening (LDA, shrunk covariance)",
           {"normalize": "whiten"}),
    Method("attention", AttentionProbe, "tokens", "attention-weighted mean over tokens", seeded=True),
    Method("max-rolling-attention", RollingAttentionProbe, "tokens",
           "GDM's max over windows of attention-weighted means", seeded=True),
    # A monitor candidate (Kramar et al.'s lesson for jailbreaks and long contexts), not one of GDM's
    # methods: the study leaves it out unless named.
    Method("token-logistic", TokenLogisticProbe, "tokens",
           "logistic regression on single tokens, pooled by the max of rolling means", study=False,
           token_sample=True),
    Method("located-logistic", LocatedLogisticProbe, "tokens",
           "logistic regression on the mean of the tokens a locator takes for the request", study=False,
           token_sample=True),
    Method("tfidf", TfidfProbe, "text", "TF-IDF word and character n-grams + logistic regression"),
    Method("minilm", LogisticProbe, "sentence-embedding",
           "all-MiniLM-L6-v2 sentence embedding + logistic regression", {"device": "cpu"}),
    Method("1-sparse", OneSparseProbe, "sae-latents", "the single SAE latent best on train"),
    Method("k-sparse", KSparseProbe, "sae-latents",
           "logistic regression on k SAE latents chosen by mean difference or an L1 path", seeded=True),
    Method("reconstruction", LogisticProbe, "sae-reconstruction",
           "logistic regression on the SAE's reconstruction, pooled", seeded=True),
    Method("error", LogisticProbe, "sae-error",
           "logistic regression on the SAE's error (activation minus reconstruction), pooled", seeded=True),
)}
assert list(METHODS) == list(NAMES) and all(m.reads_sae == NAMES[m.name].on_sae for m in METHODS.values())


def method(name: str) -> Method:
    if name not in METHODS:
        raise InputError(f"unknown method {name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[name]


def make_probe(name: str, *, seed: int = 0, inputs: dict[str, Any] | None = None, **options: Any) -> Probe:
    """A fresh probe of method `name`. `options` set config fields the method takes (`k`,
    `select`, `window`, ...); `seed` goes to the config when the probe has one."""
    m = method(name)
    fields = {f.name for f in dataclasses.fields(m.probe.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise InputError(f"method {name!r} takes no option {', '.join(unknown)}; its options: "
                         f"{', '.join(sorted(fields - set(m.defaults)))}")
    cfg = {**m.defaults, **({"seed": seed} if "seed" in fields else {}), **options}
    probe = m.probe(**cfg)
    probe.method, probe.inputs = name, inputs
    return probe
