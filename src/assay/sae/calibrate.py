"""Match penalised SAEs' L0 to a target by tuning their sparsity coefficient while they train.

Comparing architectures "at matched L0" needs each penalised SAE (L1 for Gated, L0 or the
quadratic-frequency penalty for JumpReLU) at the coefficient that gives the wanted L0 on *these*
activations; no coefficient transfers between models, layers or token budgets. Calibrating with
separate short runs costs a pass over the data per round, and on a CPU the pass is the budget.
So the coefficient is tuned inside the one training pass instead:

- during the first `control_fraction` of the steps, after every step, a PI controller sets each
  SAE's coefficient in log space: log c = I + kp * e, I += clip(gain * e), e = log(L0 / target)
  (L0 falls as c grows; log space because the right c spans decades). The integral is rate
  limited and the proportional term anticipates, because L0 follows the coefficient only as
  fast as Adam moves thresholds (about lr per step);
- the SAEs start near their targets (`start_near_target_`: a firing threshold set from the data
  so that about twice the target fires at initialisation), because L0 can fall only as fast as
  the thresholds rise, and a short run has no steps to spare;
- then the coefficient is frozen, and the SAE trains the rest of the way (the learning-rate
  decay included) at that one coefficient, which is the one recorded in its `cfg.json`.

The held coefficient is the controller's last (an average over the last steps lagged behind a
still-moving L0 and overshot it). Whether the final SAE's L0 is within
tolerance of its target is then *measured* on held-out tokens, not assumed.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from assay.errors import InputError
from assay.fileio import write_json
from assay.sae.base import SAE
from assay.sae.trainer import TrainConfig, Trainer

# The config field each penalised architecture's sparsity is set by.
COEFFICIENT = {"relu": "l1_coefficient", "gated": "l1_coefficient", "jumprelu": "l0_coefficient",
               "qf_jumprelu": "l0_coefficient"}


@dataclass
class L0Target:
    """One SAE's controller state."""

    target: float
    initial: float  # coefficient at the start (part of the run's identity)
    coefficient: float  # current coefficient
    integral: float = 0.0  # log of the integral part of the coefficient
    error: float | None = None  # smoothed log(L0 / target)
    held: float | None = None  # the frozen coefficient, once the control phase is over
    trace: list[tuple[int, float, float]] = field(default_factory=list)  # (step, batch L0, coefficient), sampled


class L0Controller:
    """Tunes `sae.cfg.<coefficient>` of each named SAE towards its target L0 (see module doc)."""

    def __init__(self, saes: dict[str, SAE], targets: dict[str, float], total_steps: int,
                 control_fraction: float = 0.6, gain: float = 0.02, proportional: float = 0.5,
                 max_log_step: float = 0.02):
        if not 0 < control_fraction < 1:
            raise InputError(f"control_fraction must be in (0, 1), got {control_fraction}")
        for name, target in targets.items():
            arch = saes[name].architecture
            if arch not in COEFFICIENT:
                raise InputError(f"SAE {name} ({arch}) has no sparsity coefficient to tune; its L0 is set by k")
            if not target > 0:
                raise InputError(f"target L0 of {name} must be > 0, got {target}")
        self.saes = saes
        self.until = max(1, int(control_fraction * total_steps))
        self.gain, self.proportional, self.max_log_step = gain, proportional, max_log_step
        self.state = {n: L0Target(target=float(t), initial=self.coefficient(n), coefficient=self.coefficient(n),
                                  integral=math.log(self.coefficient(n))) for n, t in targets.items()}

    def coefficient(self, name: str) -> float:
        sae = self.saes[name]
        return float(getattr(sae.cfg, COEFFICIENT[sae.architecture]))

    def _set(self, name: str, value: float) -> None:
        sae = self.saes[name]
        setattr(sae.cfg, COEFFICIENT[sae.architecture], float(value))
        self.state[name].coefficient = float(value)

    def observe(self, name: str, step: int, l0: float) -> None:
        """After training step `step` (1-based) in which SAE `name` had batch L0 `l0`."""
        st = self.state[name]
        if st.held is not None:
            return
        if step % 10 == 0 or step == 1:
            st.trace.append((step, round(l0, 3), st.coefficient))
        # +0.5 keeps the error finite when a batch fires nothing (L0 = 0 means: far too sparse).
        error = math.log((l0 + 0.5) / (st.target + 0.5))
        st.error = error if st.error is None else 0.9 * st.error + 0.1 * error  # batch noise smoothed
        st.integral += max(-self.max_log_step, min(self.max_log_step, self.gain * error))
        # The proportional term anticipates: L0 lags the coefficient by tens of steps, and a JumpReLU
        # threshold pushed past its data gets no gradient back, so an overshoot would stick.
        new = st.integral + self.proportional * max(-1.0, min(1.0, st.error))
        if step >= self.until:
            st.held = math.exp(new)
            self._set(name, st.held)
            st.trace.append((step, round(l0, 3), st.held))
            return
        self._set(name, math.exp(new))

    def summary(self) -> dict[str, dict[str, Any]]:
        return {n: {"target_l0": s.target, "initial_coefficient": s.initial, "coefficient": s.held or s.coefficient,
                    "held": s.held is not None, "controlled_steps": self.until, "trace": s.trace}
                for n, s in self.state.items()}

    def state_dict(self) -> dict[str, Any]:
        return {n: asdict(s) for n, s in self.state.items()}

    def load_state_dict(self, blob: dict[str, Any]) -> None:
        for n, s in blob.items():
            st = L0Target(**{**s, "trace": [tuple(t) for t in s["trace"]]})
            self.state[n] = st
            self._set(n, st.held if st.held is not None else st.coefficient)


@torch.no_grad()
def start_near_target_(sae: SAE, sample: torch.Tensor, l0: float, over: float = 2.0) -> float:
    """Set a fresh penalised SAE's firing threshold (JumpReLU's `threshold`, Gated's gate bias) to
    one value chosen so that about `over * l0` latents fire per token of `sample` [n, d_in] at
    initialisation, in the trainer's input space (scaled to unit mean squared norm, centred on
    the mean, as the trainer's b_dec starts). Returns the threshold."""
    x = sample.float()
    x = x / x.pow(2).sum(-1).mean().sqrt()
    pre = (x - x.mean(0)) @ sae.W_enc.float()
    frac = min(1.0, over * l0 / sae.cfg.d_sae)
    flat = pre.flatten()
    k = max(1, min(flat.numel(), int(round((1 - frac) * flat.numel()))))
    threshold = max(float(flat.kthvalue(k).values), 1e-6)
    if hasattr(sae, "threshold"):
        sae.threshold.fill_(threshold)
    elif hasattr(sae, "b_gate"):
        sae.b_gate.fill_(-threshold)
    else:
        raise InputError(f"{sae.architecture} SAE has no firing threshold to start near a target L0")
    return threshold


class CalibratingTrainer(Trainer):
    """The ordinary trainer (one pass, several SAEs, checkpointed), with an `L0Controller` acting
    after each step. The coefficients are part of the SAEs' configs, so a checkpoint's identity
    uses the *initial* coefficients, and the controller's state is kept in `controller.json`
    beside the checkpoint (written first, holding the last two states, so whichever checkpoint
    survives an interruption finds its own)."""

    def __init__(self, saes: dict[str, SAE], cfg: TrainConfig, out_dir: str | Path | None,
                 controller: L0Controller, metadata: dict[str, Any] | None = None):
        # The controller reads every step's L0 from the trainer's record (a copy: the caller's
        # config is left as it was); the log keeps the caller's spacing.
        super().__init__(saes, replace(cfg, log_every=1), out_dir, metadata=metadata)
        self.controller = controller
        self._log_every = cfg.log_every
        self._saved: dict[str, Any] = {}

    def _step(self, x):
        super()._step(x)
        step = self.state.step
        record = self.state.history[-1]
        for name in self.controller.state:
            self.controller.observe(name, step, record[name]["l0"])
        if step % self._log_every and step != self.cfg.total_steps:
            self.state.history.pop()  # kept only to read L0; the log keeps its usual spacing

    def _identity(self) -> dict[str, Any]:
        ident = super()._identity()
        for name, st in self.controller.state.items():
            key = COEFFICIENT[self.saes[name].architecture]
            ident["saes"][name][key] = st.initial
        ident["l0_control"] = {"targets": {n: s.target for n, s in self.controller.state.items()},
                               "until": self.controller.until, "gain": self.controller.gain}
        return ident

    def save_checkpoint(self) -> None:
        from assay.distributed import is_main

        if not self.out_dir or not is_main():
            return
        self.out_dir.mkdir(parents=True, exist_ok=True)
        current = {str(self.state.step): self.controller.state_dict()}
        # The previous checkpoint's state stays in the file until this checkpoint is written.
        write_json(self.out_dir / "controller.json", {**self._saved, **current})
        super().save_checkpoint()
        self._saved = current

    def _load_checkpoint(self) -> None:
        super()._load_checkpoint()
        if self.state.step == 0 or not self.out_dir:
            return
        path = self.out_dir / "controller.json"
        saved = json.loads(path.read_text()) if path.exists() else {}
        if str(self.state.step) not in saved:
            from assay.errors import ConfigMismatchError

            raise ConfigMismatchError(f"{self.out_dir}: the checkpoint is at step {self.state.step} but "
                                      "controller.json has no L0-controller state for it; delete the folder to "
                                      "train from the start")
        self._saved = {str(self.state.step): saved[str(self.state.step)]}
        self.controller.load_state_dict(saved[str(self.state.step)])

    def save(self, out_dir: str | Path) -> None:
        super().save(out_dir)
        write_json(Path(out_dir) / "l0_control.json", self.controller.summary())
