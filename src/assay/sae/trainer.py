"""Train one or several SAEs on one stream of token activations.

One pass over the data feeds every SAE in `saes` (dictionary_learning's trick: a sweep costs one
pass of activation reading). Inputs are scaled to unit mean squared norm with a factor estimated
on the first batches; the factor is folded into the weights when saving, so saved SAEs eat raw
activations. The stream is any iterable of `[m, d]` tensors; SAEs are moved to its device.

Under torch.distributed (`torchrun`, after `assay.distributed.join()`), each rank trains
on its own stream (its share of the tokens: `iter_tokens(part=...)`) in local batches of
`batch_size / world_size`; gradients are averaged over ranks weighted by their tokens, firing counts
and logged statistics are summed, and float buffers (BatchTopK's threshold) are averaged, so every
rank holds the same SAEs after every step: the decoder-norm and threshold updates that follow the
optimizer step see identical inputs. Rank 0 writes checkpoints and the result. One caveat: the
BatchTopK family keeps the top k x batch activations of each *local* batch.
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import math
import pickle
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import torch

from assay import distributed
from assay.errors import ConfigMismatchError, InputError
from assay.fileio import atomic_path, write_json
from assay.provenance import provenance
from assay.runtime import resolve_dtype
from assay.sae.base import SAE
from assay.sae.buffer import shuffled_batches

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    total_tokens: int
    batch_size: int = 4096
    lr: float = 3e-4
    betas: tuple[float, float] = (0.9, 0.999)
    lr_warmup_steps: int = 100
    lr_decay_fraction: float = 0.2  # linear decay to 0 over the last 20% of steps
    sparsity_warmup_steps: int = 0  # linear warm-up of the sparsity coefficient
    buffer_tokens: int = 1 << 16
    scale_batches: int = 8  # batches used to estimate the input scale
    normalize: bool = True
    # A latent that has not fired in this many tokens counts as dead (and AuxK revives it). None
    # scales the window with the run (a tenth of it, at least 4 batches, at most 10M tokens): a
    # fixed 1M-token window never fires in a 1.2M-token run, so AuxK would never act.
    dead_after_tokens: int | None = None
    checkpoint_every: int = 0  # steps; 0 = only at the end
    # Held-out evaluation (one point of the training curve) every this many training tokens, and
    # after the last step; 0 = none. Needs the `evaluate` callable given to the Trainer.
    eval_every_tokens: int = 0
    log_every: int = 20
    seed: int = 0
    progress: bool = True
    # TopK SAEs: shortlist each token's top k in this dtype (e.g. "bfloat16" where it multiplies
    # faster), then compute the shortlisted values exactly; None computes everything in float32.
    search_dtype: str | None = None

    @property
    def total_steps(self) -> int:
        return max(1, self.total_tokens // self.batch_size)

    @property
    def dead_window(self) -> int:
        if self.dead_after_tokens is not None:
            return self.dead_after_tokens
        return min(10_000_000, max(4 * self.batch_size, self.total_tokens // 10))

    def lr_factor(self, step: int) -> float:
        warm = min(1.0, (step + 1) / self.lr_warmup_steps) if self.lr_warmup_steps else 1.0
        decay_steps = int(self.total_steps * self.lr_decay_fraction)
        left = self.total_steps - step
        return warm * (min(1.0, left / decay_steps) if decay_steps else 1.0)

    def sparsity_scale(self, step: int) -> float:
        return min(1.0, (step + 1) / self.sparsity_warmup_steps) if self.sparsity_warmup_steps else 1.0


@dataclass
class _State:
    step: int = 0
    tokens_seen: int = 0  # tokens trained on
    scale: float | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    curve: list[dict[str, Any]] = field(default_factory=list)  # held-out evaluations during training
    evaluated_at: int = -1  # tokens_seen at the last curve point (on every rank, curve or not)


# TrainConfig fields that do not change the trained weights, so a resume may differ in them.
_RESUME_FREE = ("checkpoint_every", "log_every", "progress")


class Trainer:
    """`Trainer({"topk": sae1, "jr": sae2}, TrainConfig(...), out_dir).fit(stream)`."""

    def __init__(self, saes: dict[str, SAE], cfg: TrainConfig, out_dir: str | Path | None = None,
                 metadata: dict[str, Any] | None = None,
                 evaluate: Callable[[dict[str, SAE]], dict[str, dict[str, float]]] | None = None):
        """`evaluate(saes)`, given the SAEs as they would be saved (acting on raw activations), returns
        each one's held-out metrics (e.g. FVU, delta LM loss): called every `cfg.eval_every_tokens`
        tokens and after the last step, on the main rank only, into `state.curve`."""
        self.saes = saes
        self.evaluate = evaluate
        self.cfg = cfg
        self.out_dir = Path(out_dir) if out_dir else None
        self.metadata = metadata or {}
        self.state = _State()
        self.world = distributed.world_size()
        if cfg.batch_size % self.world:
            raise InputError(f"batch size {cfg.batch_size} is not a multiple of the {self.world} ranks: each rank "
                             "takes an equal share of every batch; pick a batch size divisible by the rank count")
        self.opts = {n: torch.optim.Adam(s.parameters(), lr=cfg.lr, betas=cfg.betas) for n, s in saes.items()}
        self.since_fired = {n: torch.zeros(s.cfg.d_sae, dtype=torch.long) for n, s in saes.items()}

    # --- the loop ------------------------------------------------------------------------
    def fit(self, stream: Iterable[torch.Tensor], resume: bool = False) -> dict[str, SAE]:
        """Train on `stream` (under torch.distributed: this rank's share of the tokens)."""
        torch.manual_seed(self.cfg.seed)
        for s in self.saes.values():
            if hasattr(s, "search_dtype"):
                s.search_dtype = resolve_dtype(self.cfg.search_dtype) if self.cfg.search_dtype else None
        if resume:
            self._load_checkpoint()
        # A resumed run replays the stream from its start through the same shuffle and skips the
        # batches already trained on: tokens waiting in the shuffle buffer at the checkpoint are
        # then trained on too, so it ends with the steps, tokens and weights of an unbroken run.
        # (Skipping only the tokens drawn so far lost the whole buffer: 298 of 507 steps.)
        rank, local = distributed.rank(), self.cfg.batch_size // self.world
        batches = shuffled_batches(stream, local, max(1, self.cfg.buffer_tokens // self.world),
                                   seed=self.cfg.seed + 1_000_003 * rank)
        batches = self._together(itertools.islice(self._with_scale(batches), self.state.step, None))
        for s in self.saes.values():
            s.train()
        with self._progress() as (bar, task):
            for x in batches:
                self._step(x)
                if bar is not None:
                    bar.update(task, completed=self.state.step, description=self._describe())
                self._maybe_evaluate()
                if self.cfg.checkpoint_every and self.state.step % self.cfg.checkpoint_every == 0:
                    self.save_checkpoint()
        self._maybe_evaluate(last=True)
        if self.state.step < self.cfg.total_steps and distributed.is_main():
            log.warning("SHORT RUN: the data ran out after %d of %d steps (%d of %d tokens); the SAEs are "
                        "undertrained and training.json says complete: false. Give more tokens or fewer steps.",
                        self.state.step, self.cfg.total_steps, self.state.tokens_seen, self.cfg.total_tokens)
        if self.out_dir and distributed.is_main():
            self.save(self.out_dir)
            (self.out_dir / "checkpoint.pt").unlink(missing_ok=True)  # finished: nothing left to resume
        distributed.barrier()  # the other ranks return once the result is on disk
        return self.saes

    def _maybe_evaluate(self, last: bool = False) -> None:
        """A point of the held-out curve when this step crossed a multiple of `eval_every_tokens`,
        and at the end of training (`last`), so that every curve ends at the SAEs that are saved.
        Every rank takes the same branches (they wait for the main rank's evaluation together);
        only the main rank needs `evaluate`."""
        every, st = self.cfg.eval_every_tokens, self.state
        if not every or not st.step:
            return
        if last:
            due = st.evaluated_at != st.tokens_seen
        else:
            due = st.tokens_seen // every > (st.tokens_seen - sum(self._counts)) // every
        if not due:
            return
        st.evaluated_at = st.tokens_seen
        if distributed.is_main() and self.evaluate is not None:
            point = {"step": st.step, "tokens": st.tokens_seen,
                     **self.evaluate({name: self.folded(name) for name in self.saes})}
            st.curve.append(point)
            log.info("held-out after %d tokens: %s", st.tokens_seen,
                     {n: v for n, v in point.items() if n not in ("step", "tokens")})
        distributed.barrier()

    def _together(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """The batches while steps remain and every rank still has one; records each step's token
        count per rank in `self._counts` (in one process: just the batches, until the last step)."""
        it = iter(batches)
        while self.state.step < self.cfg.total_steps:
            x = next(it, None)
            counts = distributed.gather_ints(0 if x is None else len(x))
            if min(counts) == 0:  # a rank's share ran out: every rank stops at the same step
                return
            self._counts = counts
            yield x

    def _step(self, x: torch.Tensor) -> None:
        cfg, st = self.cfg, self.state
        x = x * st.scale
        n = sum(self._counts)  # tokens in this step's batch, over every rank
        lr_f, sp = cfg.lr_factor(st.step), cfg.sparsity_scale(st.step)
        logging_step = (st.step + 1) % cfg.log_every == 0 or st.step + 1 == cfg.total_steps
        record: dict[str, Any] = {"step": st.step + 1, "tokens": st.tokens_seen + n}
        var = self._variance(x) if logging_step else None
        for name, sae in self.saes.items():
            dead = self.dead_latents(name).to(x.device)
            out = sae.loss(x, sparsity_scale=sp, dead=dead)
            opt = self.opts[name]
            opt.zero_grad(set_to_none=True)
            out["total"].backward()
            self._average_gradients(sae, len(x), n)
            sae.before_optimizer_step()
            for g in opt.param_groups:
                g["lr"] = cfg.lr * lr_f
            opt.step()
            sae.after_optimizer_step()
            self._average_buffers(sae)
            fired = distributed.sum_(out["fired"].clone()).cpu() > 0
            self.since_fired[name] += n
            self.since_fired[name][fired] = 0
            if logging_step:
                rec = self._global_terms(out, len(x), n)
                rec["fvu"] = rec["mse"] * n / var
                rec["dead"] = int(dead.sum())
                record[name] = rec
            self._last = (name, out, x)
        st.step += 1
        st.tokens_seen += n
        if len(record) > 2:
            st.history.append(record)

    def dead_latents(self, name: str) -> torch.Tensor:
        """SAE `name`'s latents that have not fired for `dead_window` tokens: AuxK's targets (a
        benchmark overrides this to hold the dead set fixed)."""
        return self.since_fired[name] >= self.cfg.dead_window

    # --- keeping the ranks identical ---------------------------------------------------------
    def _average_gradients(self, sae: SAE, n_local: int, n: int) -> None:
        """Each rank's loss is a mean over its own tokens: weight by its share, then sum, which is
        the gradient of the mean over the whole batch (local batches may differ in size)."""
        if self.world == 1:
            return
        for p in sae.parameters():
            if p.grad is not None:
                distributed.sum_(p.grad.mul_(n_local / n))

    def _average_buffers(self, sae: SAE) -> None:
        """Float buffers updated from each rank's batch (BatchTopK's running threshold) averaged."""
        if self.world == 1:
            return
        for b in sae.buffers():
            if b.is_floating_point():
                distributed.sum_(b.data).div_(self.world)

    def _global_terms(self, out: dict[str, torch.Tensor], n_local: int, n: int) -> dict[str, float]:
        """The logged loss terms and L0 over the whole batch (token-weighted means of the ranks')."""
        keys = [k for k in out if k != "fired"]
        vals = torch.stack([out[k].detach().double().reshape(()) for k in keys]) * (n_local / n)
        return dict(zip(keys, distributed.sum_(vals).tolist()))

    def _variance(self, x: torch.Tensor) -> float:
        """Total variance of the whole batch, sum_i ||x_i - mean||^2 (the FVU's denominator)."""
        if self.world == 1:
            return float((x - x.mean(0)).pow(2).sum())
        total, sq, n = self._summed_moments(x)
        return float(sq - total.pow(2).sum() / n)

    @staticmethod
    def _summed_moments(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum of the tokens [d], sum of their squared norms, token count) over every rank, in float64."""
        x = x.double()
        sums = distributed.sum_(torch.cat([x.sum(0), x.pow(2).sum().reshape(1),
                                           torch.tensor([len(x)], dtype=torch.float64, device=x.device)]))
        return sums[:-2], sums[-2], sums[-1]

    # --- input scale ----------------------------------------------------------------------
    def _with_scale(self, batches: Iterator[torch.Tensor]) -> Iterator[torch.Tensor]:
        """Estimate the scale on the first batches (unless resumed), move SAEs to the data."""
        head = list(itertools.islice(batches, self.cfg.scale_batches))
        if min(distributed.gather_ints(sum(len(h) for h in head))) == 0:
            return iter(())  # no data (on some rank): nothing to train on anywhere
        device = head[0].device
        for s in self.saes.values():
            s.to(device)
            # every rank starts from rank 0's SAEs (a rank-local initialisation or resample can't diverge)
            distributed.broadcast_([*s.parameters(), *s.buffers()])
        for opt in self.opts.values():  # optimizer state follows its parameters
            for st in opt.state.values():
                for k, v in st.items():
                    if torch.is_tensor(v) and k != "step":
                        st[k] = v.to(device)
        if self.state.scale is None:
            self.state.scale = self._saved_scale()
            msq, mean = self._head_moments(torch.cat(head))
            if self.state.scale is None:
                self.state.scale = 1.0 / math.sqrt(msq) if self.cfg.normalize and msq > 0 else 1.0
            mean = mean * self.state.scale
            for s in self.saes.values():
                if not s.raw_space:  # fresh SAE: start b_dec at the data mean (Gao et al., sparsify)
                    with torch.no_grad():
                        s.b_dec.copy_(mean.to(s.b_dec.dtype))
            for s in self.saes.values():
                if s.raw_space:  # e.g. a saved SAE being finetuned: move it into the scaled space
                    s.fold_input_scale_(1.0 / self.state.scale)
                    s.raw_space = False
        return itertools.chain(head, batches)

    def _head_moments(self, x: torch.Tensor) -> tuple[float, torch.Tensor]:
        """Mean squared norm and mean of the first batches, over every rank's. (One process keeps its
        float32 reductions, so its SAEs stay bit-identical to those trained before DDP existed.)"""
        if self.world == 1:
            x = x.float()
            return x.pow(2).sum(-1).mean().item(), x.mean(0)
        total, sq, n = self._summed_moments(x)
        return float(sq / n), (total / n).float()

    def _saved_scale(self) -> float | None:
        """The input scale a saved (raw-space) SAE must be trained at to keep its function.

        Moving a raw SAE into the scaled space multiplies its decoder rows by the scale; a
        unit-norm architecture then renormalises them, which would rescale every reconstruction
        unless the scale is the one the SAE was trained at: 1 / (its decoder row norm). A finetune
        therefore starts from exactly the saved function, whatever the norm of the new data.
        """
        scales = {}
        for name, s in self.saes.items():
            if not s.raw_space:
                continue
            if s.unit_norm_decoder:
                norms = s.W_dec.detach().float().norm(dim=1)
                alive = norms[norms > 0]
                scales[name] = 1.0 / float(alive.median()) if len(alive) else 1.0
                spread = float((alive / alive.median() - 1).abs().max()) if len(alive) else 0.0
                if spread > 1e-3:
                    log.warning("SAE %s: decoder rows differ in norm by up to %.1f%%; renormalising them "
                                "changes its reconstructions", name, 100 * spread)
            elif (saved := getattr(s, "metadata", {}).get("input_scale")) is not None:
                scales[name] = float(saved)
        if not scales:
            return None
        values = sorted(scales.values())
        if values[-1] > values[0] * (1 + 1e-4):
            raise ValueError(f"saved SAEs trained at different input scales {scales}: finetune them separately")
        return values[0]

    # --- saving ---------------------------------------------------------------------------
    def folded(self, name: str) -> SAE:
        """A copy of SAE `name` that eats raw activations (the input scale folded in)."""
        sae = copy.deepcopy(self.saes[name]).eval()
        if not sae.raw_space:
            sae.fold_input_scale_(self.state.scale or 1.0)
            sae.raw_space = True
        return sae

    def save(self, out_dir: str | Path) -> None:
        from assay.sae.io import save_sae

        out_dir = Path(out_dir)
        dead = self.dead_in_training()
        for name in self.saes:
            meta = {**self.metadata, "training_tokens": self.state.tokens_seen, "input_scale": self.state.scale,
                    "dead_in_training": dead[name], "dead_window_tokens": self.cfg.dead_window}
            save_sae(self.folded(name), out_dir / name if len(self.saes) > 1 else out_dir, metadata=meta)
        write_json(out_dir / "training.json", provenance(
            config=asdict(self.cfg), dead_window_tokens=self.cfg.dead_window, dead_in_training=dead,
            saes={n: {"architecture": s.architecture, **s.cfg.to_dict()} for n, s in self.saes.items()},
            input_scale=self.state.scale, steps=self.state.step, tokens=self.state.tokens_seen, ranks=self.world,
            steps_planned=self.cfg.total_steps, complete=self.state.step >= self.cfg.total_steps,
            metadata=self.metadata, history=self.state.history, curve=self.state.curve))

    def dead_in_training(self) -> dict[str, int]:
        """Latents of each SAE that had not fired within the dead window when training stopped."""
        return {n: int((t >= self.cfg.dead_window).sum()) for n, t in self.since_fired.items()}

    def _identity(self) -> dict[str, Any]:
        """What a checkpoint must agree on to be resumed: everything that changes the weights."""
        cfg = {k: v for k, v in asdict(self.cfg).items() if k not in _RESUME_FREE}
        return json.loads(json.dumps({
            "config": cfg, "metadata": self.metadata, "ranks": self.world,  # each rank's share depends on it
            "saes": {n: {"architecture": s.architecture, **s.cfg.to_dict()} for n, s in self.saes.items()},
        }, default=str))

    def save_checkpoint(self) -> None:
        if not self.out_dir or not distributed.is_main():
            return
        # Plain values and tensors only, so resuming never needs to unpickle arbitrary objects.
        blob = {
            "identity": json.dumps(self._identity(), sort_keys=True),
            "state": {**asdict(self.state), "history": json.dumps(self.state.history),
                      "curve": json.dumps(self.state.curve)},
            "saes": {n: s.state_dict() for n, s in self.saes.items()},
            "raw_space": {n: s.raw_space for n, s in self.saes.items()},
            "opts": {n: o.state_dict() for n, o in self.opts.items()},
            "since_fired": self.since_fired,
            "rng": torch.get_rng_state(),
        }
        with atomic_path(self.out_dir / "checkpoint.pt") as tmp:
            torch.save(blob, tmp)

    def _load_checkpoint(self) -> None:
        path = self.out_dir / "checkpoint.pt" if self.out_dir else None
        if path is None or not path.exists():
            if path is not None:
                log.info("no checkpoint in %s; training from the start", self.out_dir)
            return
        try:
            # weights_only: a checkpoint holding anything but tensors and plain values is refused
            # before any of its code can run (a crafted pickle would run on resume otherwise).
            blob = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as err:
            raise ConfigMismatchError(
                f"{path} is not a checkpoint of plain tensors and values (corrupt, or crafted: assay never unpickles "
                f"objects, which could run code; {str(err).splitlines()[0][:100]}); delete it to train from the "
                "start") from None
        except (RuntimeError, EOFError, OSError) as err:
            raise ConfigMismatchError(f"{path} is unreadable ({err}); delete it to train from the start") from None
        if not isinstance(blob, dict) or "identity" not in blob:
            raise ConfigMismatchError(f"{path} is not an assay checkpoint of this version; delete it to train "
                                      "from the start")
        theirs, ours = json.loads(blob["identity"]), self._identity()
        if theirs != ours:
            raise ConfigMismatchError(
                f"{path} was written by a run with different settings ({_differences(theirs, ours)}); resuming "
                "would mix two configurations. Rerun with the checkpoint's settings, or delete it (or choose "
                "another output directory) to train from the start")
        state = dict(blob["state"])
        state["history"] = json.loads(state["history"])
        state["curve"] = json.loads(state.get("curve", "[]"))
        self.state = _State(**state)
        for n, s in self.saes.items():
            s.load_state_dict(blob["saes"][n])
            s.raw_space = blob["raw_space"][n]
            self.opts[n].load_state_dict(blob["opts"][n])
        self.since_fired = blob["since_fired"]
        torch.set_rng_state(blob["rng"])
        log.info("resumed at step %d of %d (%d tokens)", self.state.step, self.cfg.total_steps, self.state.tokens_seen)

    # --- progress -------------------------------------------------------------------------
    def _describe(self) -> str:
        name, out, x = self._last  # this rank's batch: the bar is a glance, the log has the global numbers
        fvu = float(out["mse"].detach() * len(x) / (x - x.mean(0)).pow(2).sum())
        return f"{name}: L0 {float(out['l0']):.1f} FVU {fvu:.3f}"

    def _progress(self):
        from contextlib import contextmanager

        @contextmanager
        def ctx():
            if not self.cfg.progress or not distributed.is_main():
                yield None, None
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                          TimeRemainingColumn(), transient=False) as bar:
                task = bar.add_task("training SAEs", total=self.cfg.total_steps, completed=self.state.step)
                yield bar, task

        return ctx()


def _differences(a: dict[str, Any], b: dict[str, Any], prefix: str = "") -> str:
    """`k: checkpoint -> now` for every leaf where two nested dicts differ (the first few)."""
    out = []
    for k in sorted(set(a) | set(b)):
        x, y = a.get(k), b.get(k)
        if isinstance(x, dict) and isinstance(y, dict):
            sub = _differences(x, y, f"{prefix}{k}.")
            out += [sub] if sub else []
        elif x != y:
            out.append(f"{prefix}{k}: checkpoint {x!r}, now {y!r}")
    return "; ".join(out[:6])
