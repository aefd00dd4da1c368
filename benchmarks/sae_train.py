"""Tokens/s of assay's TopK trainer versus SAELens's TopK training step, at widths 4,096 and 16,384.

One run, the same activations (random normal, in memory) and dtype (float32) for every width and
both sides; same k, batch size and Adam. assay runs its full `Trainer` (shuffle buffer, dead-latent
tracking, decoder-norm constraint, AuxK) over an in-memory stream; SAELens runs
`TopKTrainingSAE.training_forward_pass` + backward + Adam step (its core step, without the activation
store around it), with and without its sparse-activation option.

Both sides run under two AuxK loads, each with the same fixed dead set: none dead (AuxK idle), and
an eighth of the latents dead (AuxK active on every step). Both run in one process with glibc's
malloc tuned as the CLI tunes it (`assay.runtime.tune_malloc`). Every side runs once per round and
the rounds (`--rounds`, 3) are interleaved, so a slow spell of the shared machine falls on all sides
alike; each side's tokens/s is its median over the rounds (every round's value is in the JSON).

Where `--dtype auto` chooses bf16 in this run (`assay.runtime.choose_dtype`), ours also runs with
`search_dtype="bfloat16"` (what the study and `assay sae train` then use): each token's top k is
shortlisted from bf16 pre-activations and recomputed exactly in fp32. Its row says how many tokens'
codes differed from the exact top k (on two batches, for the SAE as trained), and its fraction of
both bounds. The exact fp32 row is the one the targets are read from.

The bound: TopK training cannot beat the dense encoder forward, 2 x d_in x width FLOP per token, at
this run's fp32 matmul peak (`benchmarks/peak.py`, measured before and after the timings; the higher
is used). Per width and AuxK load the JSON has tokens/s of each side, the speed-up, and each side's
fraction of the bound in tokens/s (peak / (2 x d_in x width)). Per width it also has the step floor:
the three parts of an exact fp32 step no TopK trainer of this kind skips (the encoder addmm, torch.topk
over its output, one Adam step), each timed alone at the benchmark's shapes, and what a step made of
only them would reach: its fraction of the bound and its speed-up over SAELens. A target above those
is out of reach of any trainer built on this CPU's GEMM, topk and Adam as measured in the run. Tokens/s is the batch over the
median step time, the first step of each run left out (ours sets its input scale there; SAELens's is
its warm-up): one step slowed by a neighbour on a shared machine does not move it. A step of ours is
timed from one step's start to the next, so drawing the batch from the shuffle buffer counts.

Run with the Python of the SAELens venv (`make saelens`; `make bench` runs it), which imports assay
from src/:

    .venv-saelens/bin/python benchmarks/sae_train.py [--steps 6] [--rounds 3] [--widths 4096,16384] [--k 32]

Writes benchmarks/results/sae_train.json (or --out). About 9 minutes on 2 cores at the defaults.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))  # the work tree's assay: it is not installed in the SAELens venv
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402
from checks import check_args  # noqa: E402
from peak import matmul_peak  # noqa: E402

from assay.provenance import provenance  # noqa: E402
from assay.runtime import choose_dtype, tune_malloc  # noqa: E402
from assay.sae import TrainConfig, Trainer, build_sae  # noqa: E402
from assay.sae.sparse import topk_encode  # noqa: E402

DTYPE = torch.float32


# The two AuxK loads both sides run under: no dead latents (AuxK idle), and the same fixed eighth of
# the latents dead (AuxK active on every step). Ours finds no dead latent at all in a few steps on
# random data, so without a fixed dead set it would skip AuxK while SAELens ran it.
DEAD_FRACTIONS = {"auxk_idle": 0.0, "auxk_one_eighth_dead": 0.125}


def dead_mask(width: int, fraction: float) -> torch.Tensor:
    dead = torch.zeros(width, dtype=torch.bool)
    dead[: int(width * fraction)] = True
    return dead


class FixedDeadTrainer(Trainer):
    """assay's trainer with AuxK's dead set held fixed, as the SAELens step is given it; it records
    when each step starts, so a step's time includes drawing its batch from the shuffle buffer."""

    dead: torch.Tensor

    def dead_latents(self, name: str) -> torch.Tensor:
        return self.dead

    def _step(self, x: torch.Tensor) -> None:
        self.starts.append(time.perf_counter())
        super()._step(x)


def median_step_seconds(starts: list[float], end: float) -> float:
    """The median of the steps' times after the first (which also sets the input scale and b_dec):
    one step slowed by a neighbour on a shared machine does not move it."""
    times = [b - a for a, b in zip(starts, starts[1:] + [end])]
    return statistics.median(times[1:])


def bench_assay(x: torch.Tensor, width: int, dead: torch.Tensor, args, search_dtype: str | None = None):
    """Tokens/s of assay's trainer, and the trained SAE with its input scale (for the agreement check)."""
    sae = build_sae("topk", d_in=x.shape[1], d_sae=width, k=args.k, dtype="float32")
    n_tok = (args.steps + 1) * args.batch
    cfg = TrainConfig(total_tokens=n_tok, batch_size=args.batch, progress=False, scale_batches=1,
                      buffer_tokens=2 * args.batch, log_every=10**9, search_dtype=search_dtype)
    trainer = FixedDeadTrainer({"topk": sae}, cfg)
    trainer.dead, trainer.starts = dead, []
    trainer.fit(x[i:i + args.batch] for i in range(0, n_tok + 2 * args.batch, args.batch))
    end = time.perf_counter()
    assert sae.W_enc.dtype == DTYPE and trainer.state.step == args.steps + 1
    return args.batch / median_step_seconds(trainer.starts, end), sae, trainer.state.scale


@torch.no_grad()
def shortlist_agreement(sae, scale: float, x: torch.Tensor, batch: int) -> dict:
    """How often the bfloat16 shortlist changes the code: each token's top-k latents chosen through
    it against the exact float32 top k, for the SAE as trained, on two of the benchmark's batches."""
    tokens = tokens_differing = latents_differing = 0
    b_dec = sae.b_dec if sae.cfg.apply_b_dec_to_input else None
    for s in range(0, 2 * batch, batch):
        xb = x[s:s + batch] * scale
        _, exact, _ = topk_encode(xb, b_dec, sae.W_enc, sae.b_enc, sae.cfg.k)
        _, short, _ = topk_encode(xb, b_dec, sae.W_enc, sae.b_enc, sae.cfg.k, torch.bfloat16)
        exact_set = torch.zeros(len(xb), sae.cfg.d_sae, dtype=torch.bool).scatter_(1, exact, True)
        missing = sae.cfg.k - exact_set.gather(1, short).sum(1)  # chosen latents not in the exact top k
        tokens += len(xb)
        tokens_differing += int((missing > 0).sum())
        latents_differing += int(missing.sum())
    return {"tokens": tokens, "tokens_with_a_different_code": tokens_differing,
            "fraction_of_code_entries_different": latents_differing / (tokens * sae.cfg.k)}


def bench_saelens(x: torch.Tensor, width: int, dead: torch.Tensor, args, sparse: bool) -> float:
    from sae_lens import TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.saes.sae import TrainStepInput

    sae = TopKTrainingSAE(TopKTrainingSAEConfig(d_in=x.shape[1], d_sae=width, k=args.k, dtype="float32",
                                                use_sparse_activations=sparse))
    assert sae.W_enc.dtype == DTYPE
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)

    def step(batch):
        out = sae.training_forward_pass(TrainStepInput(sae_in=batch, coefficients={}, dead_neuron_mask=dead,
                                                       n_training_steps=0, is_logging_step=False))
        opt.zero_grad()
        out.loss.backward()
        opt.step()

    starts = []
    for i in range(args.steps + 1):  # the first is a warm-up, as ours sets up its scale there
        starts.append(time.perf_counter())
        step(x[i * args.batch:(i + 1) * args.batch])
    return args.batch / median_step_seconds(starts, time.perf_counter())


def median_ms(fn, reps: int) -> tuple[float, list[float]]:
    fn()  # warm-up: first-touch page faults and kernel selection
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def step_floor(x: torch.Tensor, width: int, args) -> dict:
    """The parts of an exact fp32 TopK step that no trainer of this kind skips, each timed alone at
    the benchmark's shapes: the dense encoder addmm (the bound's FLOPs, at the speed this CPU's GEMM
    reaches on that shape), torch.topk over its [batch, width] output, and one Adam step over the
    SAE's parameters (the trainer's and SAELens's optimizer). Their sum caps the tokens/s any such
    trainer reaches here, before its sparse backward, decoder and loss are counted."""
    sae = build_sae("topk", d_in=x.shape[1], d_sae=width, k=args.k, dtype="float32")
    batch = x[: args.batch]
    with torch.no_grad():
        pre = torch.addmm(sae.b_enc, batch, sae.W_enc)
    for p in sae.parameters():
        p.grad = torch.randn_like(p) * 1e-3
    opt = torch.optim.Adam(sae.parameters(), lr=3e-4)
    parts = {
        "encoder_addmm": lambda: torch.addmm(sae.b_enc, batch, sae.W_enc),
        "topk": lambda: pre.topk(args.k, dim=-1, sorted=False),
        "adam_step": opt.step,
    }
    with torch.no_grad():
        timed = {name: median_ms(fn, args.floor_reps) for name, fn in parts.items()}
    total = sum(m for m, _ in timed.values())
    addmm_gflops = 2 * args.batch * x.shape[1] * width / (timed["encoder_addmm"][0] / 1e3) / 1e9
    return {"ms": {k: round(m, 2) for k, (m, _) in timed.items()},
            "ms_by_rep": {k: [round(t, 2) for t in ts] for k, (_, ts) in timed.items()},
            "sum_ms": round(total, 2), "tokens_per_s_if_only_these": round(args.batch / total * 1e3, 1),
            "encoder_addmm_gflops": round(addmm_gflops, 1)}


def one_condition(x: torch.Tensor, width: int, fraction: float, args, bf16: bool) -> dict:
    """Every side once per round, the rounds interleaved, so a slow spell of a shared machine
    falls on all sides alike; tokens/s per side is the median over the rounds."""
    dead = dead_mask(width, fraction)
    rounds: dict[str, list[float]] = {}
    notes, agreement = {}, None
    for r in range(args.rounds):
        rounds.setdefault("assay_topk_trainer", []).append(bench_assay(x, width, dead, args)[0])
        if bf16:
            rate, sae, scale = bench_assay(x, width, dead, args, search_dtype="bfloat16")
            rounds.setdefault("assay_topk_trainer_bf16_search", []).append(rate)
            if r == args.rounds - 1:
                agreement = shortlist_agreement(sae, scale, x, args.batch)
        rounds.setdefault("saelens_topk_step", []).append(bench_saelens(x, width, dead, args, sparse=False))
        if "saelens_topk_step_sparse_activations" in notes:
            continue
        try:
            rate = bench_saelens(x, width, dead, args, sparse=True)
            rounds.setdefault("saelens_topk_step_sparse_activations", []).append(rate)
        except Exception as err:  # sae-lens's sparse mode has no backward for some sparse ops on CPU
            notes["saelens_topk_step_sparse_activations"] = f"failed: {type(err).__name__}: {str(err)[:160]}"
    rates = {k: statistics.median(v) for k, v in rounds.items()}
    best_lens = max(v for k, v in rates.items() if k.startswith("saelens"))
    return {"dead_latents": int(dead.sum()), "tokens_per_s": rates, "rounds": rounds, "best_lens": best_lens,
            "notes": notes, "bf16_search_agreement": agreement}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=6, help="timed steps per side, width and AuxK load (after a "
                   "first step that is not counted); tokens/s is the batch over the median step time")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of every side; each side's tokens/s is "
                   "its median over them")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--widths", default="4096,16384", help="comma-separated SAE widths")
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--d-in", type=int, default=640)  # Gemma 3 270M's d_model
    p.add_argument("--floor-reps", type=int, default=9, help="timings of each part of the step floor (median)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sae_train.json"))
    args = p.parse_args()
    try:
        widths = [int(w) for w in args.widths.split(",")]
    except ValueError:
        p.error(f"--widths {args.widths!r}: give whole numbers separated by commas, e.g. 4096,16384")
    # --steps 0 would time no step: only the first, which is left out, would run
    check_args(p, at_least={"--steps": (args.steps, 1), "--rounds": (args.rounds, 1), "--floor-reps": (args.floor_reps, 1),
                            "--batch": (args.batch, 1), "--d-in": (args.d_in, 1)})
    if any(w < 1 for w in widths) or not 1 <= args.k <= min(widths):
        p.error(f"--k {args.k} and --widths {args.widths}: every width must be positive and at least k (k at least 1)")
    import sae_lens

    # as the CLI does at start-up: glibc otherwise maps and unmaps every big tensor (both sides gain)
    malloc_tuned = tune_malloc()
    torch.manual_seed(0)
    x = torch.randn((args.steps + 5) * args.batch, args.d_in, dtype=DTYPE)  # one set for every width and side
    peak_before = matmul_peak(DTYPE)
    # The bf16 shortlist runs where `--dtype auto` would load the model in bf16 (the study and
    # `assay sae train` shortlist exactly then); on an AVX2-only CPU bf16 matmuls are ~50x slower.
    auto_dtype, auto_why = choose_dtype("auto", "cpu")
    bf16 = auto_dtype == "bfloat16"
    # measured only where it is used (the bf16 shortlist's row): on AVX2 its 4096^3 GEMM alone takes minutes
    peak_bf16 = matmul_peak(torch.bfloat16) if bf16 else {"not_measured": "--dtype auto chose float32 here"}
    per_width = {w: {c: one_condition(x, w, f, args, bf16) for c, f in DEAD_FRACTIONS.items()} for w in widths}
    floors = {w: step_floor(x, w, args) for w in widths}
    peak_after = matmul_peak(DTYPE)
    peak = max(peak_before["peak_gflops"], peak_after["peak_gflops"])
    out_widths = {}
    for w, conditions in per_width.items():
        bound_flop = 2 * args.d_in * w
        bound_rate = peak * 1e9 / bound_flop
        floor = floors[w]
        floor_rate = floor["tokens_per_s_if_only_these"]
        out_widths[str(w)] = {"bound_flop_per_token": bound_flop, "bound_tokens_per_s": round(bound_rate, 1),
                              "step_floor": {**floor,
                                             "encoder_addmm_fraction_of_peak": round(floor["encoder_addmm_gflops"] / peak, 3),
                                             "fraction_of_bound_if_only_these": round(floor_rate / bound_rate, 3)}}
        for c, r in conditions.items():
            rates, lens = r["tokens_per_s"], r["best_lens"]
            row = {
                "dead_latents": r["dead_latents"],
                "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
                "tokens_per_s_by_round": {k: [round(v, 1) for v in vs] for k, vs in r["rounds"].items()},
                "speedup_vs_saelens": round(rates["assay_topk_trainer"] / lens, 2),
                "assay_fraction_of_bound": round(rates["assay_topk_trainer"] / bound_rate, 3),
                "saelens_fraction_of_bound": round(lens / bound_rate, 3),
                # the most any trainer computing these three parts as timed here could be ahead of SAELens
                "step_floor_speedup_vs_saelens": round(floor_rate / lens, 2),
                "notes": r["notes"],
            }
            if bf16:
                fast = rates["assay_topk_trainer_bf16_search"]
                row["bf16_search"] = {
                    "speedup_vs_saelens": round(fast / lens, 2),
                    "fraction_of_fp32_bound": round(fast / bound_rate, 3),
                    "fraction_of_bf16_bound": round(fast * bound_flop / (peak_bf16["peak_gflops"] * 1e9), 3),
                    "agreement_with_exact_top_k": r["bf16_search_agreement"],
                }
            out_widths[str(w)][c] = row
    result = provenance(
        benchmark="sae_train", dtype=str(DTYPE).removeprefix("torch."), device="cpu", threads=torch.get_num_threads(),
        sae_lens_version=sae_lens.__version__, config={**{k: v for k, v in vars(args).items() if k != "out"}, "widths": widths},
        activations="random normal, in memory, one tensor for every width and both sides",
        auxk_conditions={c: f"{f:g} of the latents dead, the same fixed set on both sides" for c, f in DEAD_FRACTIONS.items()},
        malloc_tuned=malloc_tuned,
        bound="dense encoder forward, 2 x d_in x width FLOP per token, at this run's fp32 matmul peak",
        step_floor=("per width: the encoder addmm, torch.topk over its output and one Adam step, each timed alone "
                    f"(median of {args.floor_reps}) at the benchmark's shapes in fp32; tokens/s if a step did only these, "
                    "its fraction of the bound, and that rate over SAELens's (the most a trainer built on these kernels "
                    "could be ahead of it)"),
        matmul_peak={"dtype": str(DTYPE).removeprefix("torch."), "peak_gflops": round(peak, 1),
                     "before": peak_before, "after": peak_after},
        bf16_matmul_peak=peak_bf16,
        bf16_search=("assay's trainer again with TrainConfig.search_dtype='bfloat16': each token's top k is "
                     "shortlisted (k + 16 candidates) from bf16 pre-activations and recomputed exactly in fp32; "
                     "parameters, gradients and Adam stay fp32. Run because --dtype auto chose bfloat16 here"
                     if bf16 else "not run: --dtype auto chose float32 here"),
        dtype_auto={"chose": auto_dtype, **auto_why},
        widths=out_widths,
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"fp32 matmul peak {peak:,.1f} GFLOP/s (before {peak_before['peak_gflops']:,.1f}, "
          f"after {peak_after['peak_gflops']:,.1f})")
    for w, r in out_widths.items():
        f = r["step_floor"]
        print(f"width {int(w):>6,} step floor: addmm {f['ms']['encoder_addmm']:.1f} ms "
              f"({f['encoder_addmm_fraction_of_peak']:.2f} of the peak), topk {f['ms']['topk']:.1f} ms, Adam "
              f"{f['ms']['adam_step']:.1f} ms: at most {f['tokens_per_s_if_only_these']:,.0f} tok/s = "
              f"{f['fraction_of_bound_if_only_these']:.3f} of the bound")
        for c in DEAD_FRACTIONS:
            t = r[c]["tokens_per_s"]
            print(f"width {int(w):>6,} {c:>21}: assay {t['assay_topk_trainer']:>9,.1f} tok/s, SAELens "
                  f"{t['saelens_topk_step']:>9,.1f} tok/s, speed-up {r[c]['speedup_vs_saelens']:.2f}x; assay "
                  f"{r[c]['assay_fraction_of_bound']:.3f} of the bound ({r['bound_tokens_per_s']:,.0f} tok/s), "
                  f"SAELens {r[c]['saelens_fraction_of_bound']:.3f}")
            if "bf16_search" in r[c]:
                b = r[c]["bf16_search"]
                print(f"{'':>31}bf16 shortlist: assay {t['assay_topk_trainer_bf16_search']:>9,.1f} tok/s, speed-up "
                      f"{b['speedup_vs_saelens']:.2f}x; {b['agreement_with_exact_top_k']['tokens_with_a_different_code']}"
                      f" of {b['agreement_with_exact_top_k']['tokens']} tokens' codes differ from the exact top k")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
