"""The one place that turns (dataset, model, layer, input spec) into what a probe reads.

The study, `assay probe train | eval`, the debugger and the monitor's build all read cached
activations through `Inputs`, and the live monitor reads a residual batch through `read_live`, so
a probe is fed the same tensors wherever it is fitted or deployed. An `InputSpec` (saved in every
probe's `probe.json`) names the input, its layer included; `Inputs.read` returns `(X, mask)` over
every example of the dataset, computed once and reused:

- `pooled`: `acts.pooled(layer, aggregation)` `[n, d]`, mask None;
- `tokens`: the last `max_tokens` real tokens of each prompt `[n, T, d]` (the extraction dtype)
  with their mask `[n, T]` (`last_real_positions`: the one cut, cached or live); token-level
  probes fit on a fixed per-prompt sample of them instead (`Inputs.sample`, `PackedTokens`);
- `sae-latents | sae-reconstruction | sae-error`: the SAE applied to every real token, then pooled
  by the aggregation's own mask (`all.max` latents are the max over tokens of each latent);
- `text`: the prompts (an object array); `sentence-embedding`: MiniLM embeddings `[n, 384]`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np
import torch

from assay.activations.aggregation import Aggregation, pool_roles, pool_tokens, real_tokens, token_mask

DEFAULT_MAX_TOKENS = 512  # attention probes read at most the last N tokens of a prompt
SAE_OUTPUTS = ("latents", "reconstruction", "error")


@dataclass(frozen=True)
class InputSpec:
    reads: str  # one of assay.probes.methods.READS
    aggregation: str | None = None  # pooled and SAE inputs
    layer: int | None = None
    model: str | None = None
    sae: str | None = None  # the SAE's directory, for sae-* inputs
    max_tokens: int | None = None  # tokens inputs

    @classmethod
    def for_method(cls, method: str, *, aggregation: str | None = None, layer: int | None = None,
                   model: str | None = None, sae: str | None = None,
                   max_tokens: int = DEFAULT_MAX_TOKENS) -> "InputSpec":
        """The input `method` reads, keeping only the fields that input uses."""
        from assay.errors import InputError
        from assay.probes.methods import method as get_method

        reads = get_method(method).reads
        if reads.startswith("sae-") and not sae:
            raise InputError(f"method {method!r} reads an SAE's {reads.removeprefix('sae-')}: pass --sae DIR")
        if aggregation is not None and reads not in ("pooled", "sae-latents", "sae-reconstruction", "sae-error"):
            raise InputError(f"method {method!r} reads {reads}, not one vector per prompt: an aggregation "
                             f"({aggregation!r}) does not apply to it; leave --aggregation out")
        activations = reads not in ("text", "sentence-embedding")
        return cls(reads=reads,
                   aggregation=str(Aggregation.parse(aggregation or "all.max")) if reads == "pooled" or reads.startswith("sae-") else None,
                   layer=layer if activations else None, model=model if activations else None,
                   sae=sae if reads.startswith("sae-") else None, max_tokens=max_tokens if reads == "tokens" else None)

    @classmethod
    def from_dict(cls, d: Any) -> "InputSpec":
        """A spec read back from a probe's `probe.json`, its fields' types checked."""
        from assay.errors import ConfigMismatchError
        from assay.probes.methods import READS

        types = {"reads": str, "aggregation": (str, type(None)), "layer": (int, type(None)),
                 "model": (str, type(None)), "sae": (str, type(None)), "max_tokens": (int, type(None))}
        bad = "not an object" if not isinstance(d, dict) else next(
            (f"{k}={d.get(k)!r}" for k, t in types.items() if not isinstance(d.get(k), t) or isinstance(d.get(k), bool)),
            None) or (f"reads={d['reads']!r}" if d["reads"] not in READS else None)
        if bad is None and set(d) - set(types):
            bad = f"unknown fields {sorted(set(d) - set(types))}"
        if bad:
            raise ConfigMismatchError(f"the probe's input spec is malformed ({bad}); train the probe again")
        if d["aggregation"] is not None:
            Aggregation.parse(d["aggregation"])
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def label(self) -> str:
        """What a report row says the method read (its `features`)."""
        if self.reads in ("text", "sentence-embedding"):
            return "text"
        if self.reads == "tokens":
            return f"tokens:all[-{self.max_tokens}:]"
        return str(self.aggregation)


class Inputs:
    """What probes read, for every example of one dataset, each input computed once.

    `acts` is the dataset's activation cache entry (`assay.activations.extract`); a spec's own
    `layer` is read where it names one, `layer` otherwise; `texts` are its prompts. SAE outputs are
    computed for every aggregation in `aggregations` in one pass over the tokens, and only the last
    SAE's are kept (they are the largest thing here). `requests` (`assay.data.spans.
    request_token_masks`) say which tokens carry a prompt's label, for the token-level probes' sample.
    """

    def __init__(self, acts: Any = None, texts: Sequence[str] | None = None, *, layer: int | None = None,
                 aggregations: Sequence[str] = (), dtype: str = "float32", progress: bool = False,
                 requests: Sequence[np.ndarray] | None = None) -> None:
        self.acts, self.texts, self.layer = acts, texts, layer
        self.aggregations = list(aggregations)
        self.dtype, self.progress, self.requests = dtype, progress, requests
        self._memo: dict[tuple, Any] = {}
        self._sae_key: Any = None
        self._sae_outputs: dict[str, dict[str, torch.Tensor]] = {}

    def _layer(self, spec: InputSpec) -> int:
        layer = self.layer if spec.layer is None else spec.layer
        if layer is None:
            raise ValueError(f"input {spec.label!r} names no layer and these inputs have none; set one")
        return layer

    def read(self, spec: InputSpec, sae: Any = None) -> tuple[Any, torch.Tensor | None]:
        """`(X, mask)` over every example; `sae` is the loaded SAE of an `sae-*` spec."""
        if spec.reads == "pooled":
            key = ("pooled", self._layer(spec), spec.aggregation)
            if key not in self._memo:  # a monitor's selection reads one matrix for hundreds of fits
                self._memo[key] = self.acts.pooled(key[1], spec.aggregation)
            return self._memo[key], None
        if spec.reads == "tokens":
            key = ("tokens", self._layer(spec), spec.max_tokens)
            if key not in self._memo:  # the largest input: the study calls `release` between stages
                self._memo[key] = token_inputs(self.acts, key[1], spec.max_tokens)
            return self._memo[key]
        if spec.reads == "text":
            return np.array(list(self.texts), dtype=object), None
        if spec.reads == "sentence-embedding":
            if "embedding" not in self._memo:
                from assay.models.sentence import embed
                from assay.runtime import dtype_name, resolve_dtype

                self._memo["embedding"] = embed(list(self.texts), progress=self.progress,
                                                dtype=dtype_name(resolve_dtype(self.dtype)))
            return self._memo["embedding"], None
        if spec.reads.startswith("sae-"):
            if sae is None:
                raise ValueError(f"{spec.reads} needs the SAE at {spec.sae}")
            layer = self._layer(spec)
            if self._sae_key is None or self._sae_key[0] is not sae or self._sae_key[1] != layer:
                self._sae_outputs.clear()  # free the last SAE's outputs before computing these
                aggs = list(dict.fromkeys([*self.aggregations, spec.aggregation]))
                self._sae_outputs = sae_outputs(self.acts, sae, layer, aggs, search_dtype=_search_dtype(self.acts),
                                                progress=self.progress)
                self._sae_key = (sae, layer)  # the SAE itself, not its id: an id is reused once freed
            out = self._sae_outputs[spec.reads.removeprefix("sae-")]
            if spec.aggregation not in out:
                raise ValueError(f"{spec.aggregation} was not among the aggregations encoded ({', '.join(out)})")
            return out[spec.aggregation], None
        raise ValueError(f"unknown input {spec.reads!r}")

    def packed(self, spec: InputSpec) -> "PackedTokens":
        """Every example's last `spec.max_tokens` tokens end to end, with which carry the label."""
        key = ("packed", self._layer(spec), spec.max_tokens)
        if key not in self._memo:
            self._memo[key] = PackedTokens.read(self.acts, key[1], int(spec.max_tokens), self.requests, self.progress)
        return self._memo[key]

    def sample(self, spec: InputSpec, n_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fixed sample of up to `n_tokens` of each example's tokens `(X, mask, carries)`: what a
        token-level probe fits on (`PackedTokens.sample`)."""
        key = ("sample", self._layer(spec), spec.max_tokens, n_tokens, seed)
        if key not in self._memo:
            self._memo[key] = self.packed(spec).sample(n_tokens, seed)
        return self._memo[key]

    def release(self) -> None:
        """Drop every computed input (the study calls it between stages to bound memory)."""
        self._memo.clear()
        self._sae_outputs.clear()
        self._sae_key = None


def last_real_positions(real: torch.Tensor, max_tokens: int) -> torch.Tensor:
    """Positions of a prompt's last `max_tokens` real tokens (`real [T]`, bool): the one cut every
    per-token input makes, from the cache or from a live batch, so a served prompt is read as the
    thresholds' prompts were."""
    return torch.nonzero(real).squeeze(1)[-max_tokens:]


@torch.inference_mode()
def read_live(spec: InputSpec, h: torch.Tensor, roles: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor] | None]:
    """What a probe reading `spec` is fed from a live residual batch: `h [b, T, d]` after
    `spec.layer` for right-padded prompts with `roles [b, T]` (-1 on padding).

    `(X, mask, positions)`: pooled inputs `[b, d]` (float32, `activations.aggregation`, as
    extraction pooled them) with no mask or positions; per-token inputs the last `max_tokens` real
    tokens `[b, T', d]` left-aligned, their mask and each prompt's positions in the batch.
    """
    from assay.errors import InputError

    if spec.reads == "pooled":
        agg = Aggregation.parse(spec.aggregation)
        return pool_roles(h, roles, [agg])[agg.name].cpu(), None, None
    if spec.reads != "tokens":
        raise InputError(f"input {spec.reads!r} is not read from the model's activations; a monitor serves "
                         "pooled or per-token probes")
    h, real = h.cpu(), real_tokens(roles.cpu())
    kept = [last_real_positions(real[j], int(spec.max_tokens)) for j in range(len(h))]
    X, mask = _padded([h[j, k] for j, k in enumerate(kept)], h[:, 0])
    return X, mask, kept


def token_inputs(acts: Any, layer: int, max_tokens: int, chunk: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token activations `[n, T, d]` and mask of every example, each cut to its last
    `max_tokens` real tokens. Allocated once at its final size, in the extraction dtype (bf16
    activations lose nothing and take half the memory): at GDM's scale the largest tensor of a run."""
    counts = acts.token_counts("all").clamp(max=max_tokens)
    n = len(counts)
    X = torch.zeros(n, int(counts.max()) if n else 0, acts.d_model, dtype=_dtype_of(acts))
    M = torch.arange(X.shape[1])[None, :] < counts[:, None]
    for start in range(0, n, chunk):
        x, m = acts.token_batch(layer, list(range(start, min(start + chunk, n))), mask="all")
        for j in range(len(x)):
            keep = x[j][last_real_positions(m[j], max_tokens)]
            X[start + j, : len(keep)] = keep
    return X, M


@dataclass
class PackedTokens:
    """Every example's last `max_tokens` real tokens end to end, `x [N, d]` in the extraction dtype,
    example i at `x[offsets[i]:offsets[i + 1]]`, and which tokens carry the prompt's label
    (`carries [N]`, `assay.data.spans`). A padded `[n, longest, d]` copy of a benchmark with long
    jailbreak templates is most padding; this is the token-level probes' input (1.35 GB for the
    full benchmark's 1.05M tokens at d=640 in bf16)."""

    x: torch.Tensor
    offsets: np.ndarray
    carries: torch.Tensor

    @classmethod
    def read(cls, acts: Any, layer: int, max_tokens: int, requests: Sequence[np.ndarray] | None = None,
             progress: bool = False) -> "PackedTokens":
        """From a cache entry that stores tokens; `requests` are `assay.data.spans.request_token_masks`
        (None: every real token carries the label)."""
        from assay.data.spans import label_carrying_tokens

        dtype = _dtype_of(acts)
        xs, cs, offsets = [], [], [0]
        for i in _track(range(acts.n), progress, f"reading layer {layer} tokens"):
            x, roles, _ = acts.example_tokens(layer, i)
            real = real_tokens(roles)
            keep = last_real_positions(real, max_tokens)
            carry = label_carrying_tokens(roles, requests[i]) if requests is not None else real
            xs.append(x[keep].to(dtype))
            cs.append(carry[keep])
            offsets.append(offsets[-1] + len(xs[-1]))
        return cls(torch.cat(xs), np.asarray(offsets), torch.cat(cs))

    @property
    def n(self) -> int:
        return len(self.offsets) - 1

    def padded(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """`(X [b, T, d], mask [b, T], carries [b, T])` of these examples, right-padded."""
        spans = [slice(int(self.offsets[i]), int(self.offsets[i + 1])) for i in rows]
        X, mask = _padded([self.x[s] for s in spans], self.x)
        return X, mask, _padded([self.carries[s] for s in spans], self.carries)[0]

    def sample(self, n_tokens: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """A fixed sample of up to `n_tokens` tokens per example (`probes.token.sample_positions`), as
        `padded` lays them out: what a token-level probe fits on, `n x n_tokens x d` in memory."""
        from assay.probes.token import sample_positions

        rng = np.random.default_rng(seed)
        X = torch.zeros(self.n, n_tokens, self.x.shape[1], dtype=self.x.dtype)
        M = torch.zeros(self.n, n_tokens, dtype=torch.bool)
        C = torch.zeros(self.n, n_tokens, dtype=torch.bool)
        for i in range(self.n):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            pos, car = sample_positions(np.ones(b - a, dtype=bool), self.carries[a:b].numpy(), n_tokens, rng)
            X[i, : len(pos)], M[i, : len(pos)], C[i, : len(pos)] = self.x[a + torch.as_tensor(pos)], True, torch.as_tensor(car)
        return X, M, C

    def score(self, probe: Any, rows: Sequence[int], batch: int = 256) -> np.ndarray:
        """`probe.score` over these examples' tokens, `batch` examples at a time (bounded memory)."""
        out = self.map(lambda X, M: torch.as_tensor(np.asarray(probe.score(X, M), dtype=np.float64)), rows, batch)
        return out.numpy()

    def map(self, fn: Any, rows: Sequence[int], batch: int = 256) -> torch.Tensor:
        """`fn(X, mask)` over these examples, `batch` at a time, concatenated."""
        rows = list(rows)
        out = [fn(*self.padded(rows[k:k + batch])[:2]) for k in range(0, len(rows), batch)]
        return torch.cat(out) if out else torch.zeros(0)


def _padded(seqs: Sequence[torch.Tensor], like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Variable-length sequences `[t_i, *]` right-padded with zeros to `[b, max t_i, *]`, and the
    mask of their real positions `[b, max t_i]`; no sequences give an empty batch of `like`'s
    dtype and trailing shape."""
    from torch.nn.utils.rnn import pad_sequence

    if not len(seqs):
        return like.new_zeros(0, 0, *like.shape[1:]), torch.zeros(0, 0, dtype=torch.bool)
    X = pad_sequence(list(seqs), batch_first=True)
    return X, torch.arange(X.shape[1])[None, :] < torch.tensor([len(s) for s in seqs])[:, None]


def _track(it: Any, progress: bool, what: str) -> Any:
    if not progress:
        return it
    from rich.progress import track

    return track(it, description=what)


def _dtype_of(acts: Any) -> torch.dtype:
    from assay.runtime import resolve_dtype

    return resolve_dtype(acts.spec["dtype"])


def _search_dtype(acts: Any) -> torch.dtype | None:
    """TopK codes of activations extracted in bf16 are shortlisted in bf16, as the SAEs trained on
    such activations were (`assay.runtime.search_dtype_for`); otherwise computed directly."""
    from assay.runtime import resolve_dtype, search_dtype_for

    search = search_dtype_for(_dtype_of(acts))
    return resolve_dtype(search) if search else None


def _device(sae: Any) -> torch.device:
    params = getattr(sae, "parameters", None)
    return next(iter(params()), torch.zeros(())).device if callable(params) else torch.device("cpu")


@torch.no_grad()
def sae_outputs(
    acts: Any, sae: Any, layer: int, aggregations: Sequence[str], indices: Sequence[int] | None = None,
    *, token_budget: int = 8192, search_dtype: torch.dtype | None = None, progress: bool = False,
) -> dict[str, dict[str, torch.Tensor]]:
    """SAE latents, reconstruction and error (x - x_hat) of every stored token of the examples
    `indices` (default all), each pooled by every aggregation with that aggregation's own mask:
    `{output: {aggregation: [n, *]}}`.

    One read and one encoding per token serves every aggregation and output. Examples are batched
    by length to a token budget so padding costs little; padding is never encoded. A TopK SAE is
    encoded without its dense code (`encode_topk`, optionally shortlisting in `search_dtype`).
    """
    from assay.sae.architectures.topk import TopKSAE

    indices = list(range(acts.n)) if indices is None else [int(i) for i in indices]
    counts = acts.token_counts("all")[indices]
    order = sorted(range(len(indices)), key=lambda j: int(counts[j]))
    aggs = [Aggregation.parse(a) for a in aggregations]
    device = _device(sae)
    d_sae, d_in = int(sae.W_dec.shape[0]), int(sae.W_dec.shape[1])
    out = {o: {a.name: torch.zeros(len(indices), d_sae if o == "latents" else d_in) for a in aggs} for o in SAE_OUTPUTS}
    batches, cur, longest = [], [], 0
    for j in order:  # length-sorted, so a batch's padded size is about its real size
        n = max(1, int(counts[j]))
        if cur and max(longest, n) * (len(cur) + 1) > token_budget:
            batches.append(cur)
            cur, longest = [], 0
        cur.append(j)
        longest = max(longest, n)
    if cur:
        batches.append(cur)
    for batch in _track(batches, progress, "encoding tokens with the SAE"):
        x, roles = acts.token_batch_roles(layer, [indices[j] for j in batch])
        real = real_tokens(roles)
        flat = x[real].to(device)
        if isinstance(sae, TopKSAE):
            vals, idx = sae.encode_topk(flat, search_dtype)
            z_real = torch.zeros(len(flat), d_sae, device=device, dtype=vals.dtype).scatter_(1, idx, vals)
            x_hat = sae.decode_topk(vals, idx)
        else:
            z_real = sae.encode(flat)
            x_hat = sae.decode(z_real)
        per_token = {"latents": z_real, "reconstruction": x_hat, "error": flat - x_hat.to(flat.dtype)}
        masks = {a.mask: token_mask(a.mask, roles) for a in aggs}
        rows = torch.as_tensor(batch)
        for o, values in per_token.items():
            full = torch.zeros(*real.shape, values.shape[-1])
            full[real] = values.float().cpu()
            for a in aggs:
                out[o][a.name][rows] = pool_tokens(full, masks[a.mask], a)
    return out
