"""What the monitor costs on top of generation: tokens/s with and without the probe, in one run.

The same greedy generations (same prompts, same number of new tokens, end-of-turn ignored so every
generation is exactly `--tokens` long) run with the probe (a hook on its block during the prefill,
then pooling and the probe's dot product) and without it. The two arms are interleaved prompt by
prompt, in ABBA order, over several rounds, so drifts in machine load fall on both alike. Reported:
tokens/s each way and the overhead of the probe as a share of total time, both as the ratio of the
summed times and as the median of per-generation ratios (robust to one generation hit by noise), and
the verdict's own cost timed directly (a number that no load noise can hide). Also the dtype,
matmul GFLOP/s in float32 and bfloat16, torch threads and provenance.

    .venv/bin/python benchmarks/generate_overhead.py [--bundle runs/monitor-full] [--tokens 128]
        [--prompts 8] [--rounds 3] [--threads N] [--out benchmarks/results/generate_overhead.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Any

import torch
from checks import check_args  # benchmarks/checks.py

from assay.activations.extraction import pad_prompts
from assay.activations.forward import residual_stream
from assay.fileio import write_json
from assay.monitor.generate import Generator, SamplingParams
from assay.monitor.scorer import Monitor
from assay.provenance import provenance
from assay.runtime import dtype_name, matmul_speeds, tune_malloc

# Chat prompts of mixed lengths (a short question to a long instruction): prefill length sets how
# much the probe's pooling has to read, decoding length how much time the probe is measured against.
PROMPTS = [
    "hi",
    "What is the capital of Australia?",
    "Write a short poem about the sea.",
    "How do I bake sourdough bread at home? List the steps.",
    "Explain the difference between a list and a tuple in Python, with an example of when to use each.",
    "Summarise the plot of Hamlet in three sentences, then list its main characters and what happens to each of "
    "them by the end of the play.",
    "I am planning a week-long trip to Japan in spring. Suggest an itinerary that covers Tokyo, Kyoto and Osaka, "
    "with one day trip from each city, and tell me which rail pass to buy and why.",
    "Give me a weekly training plan for a first half marathon, starting from running 10 km a week, with rest days, "
    "one long run, and advice on pacing and what to eat before the race.",
]


def timed_generation(gen: Generator, chat: list[dict], tokens: int) -> tuple[float, Any]:
    start = time.perf_counter()
    done = gen.generate(chat, SamplingParams(max_tokens=tokens, temperature=0.0))
    return time.perf_counter() - start, done


def verdict_seconds(monitor: Monitor, chat: list[dict], reps: int = 20) -> float:
    """Median seconds of the probe's own work on one prompt's activations at its layer (what the
    monitor adds to a generation besides the hook, which keeps a reference and copies nothing)."""
    prompt = monitor.format_messages(chat)
    ids, attn, roles, _ = pad_prompts([prompt], monitor.lm.tokenizer.pad_token_id, monitor.lm.device)
    h = residual_stream(monitor.lm, ids, attn, [monitor.bundle.layer])[monitor.bundle.layer]
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        monitor.verdicts_from_residual(h, roles, [prompt])
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def arm_summary(seconds: list[float], prefill: list[float], tokens: int) -> dict[str, float]:
    total = sum(seconds)
    return {"seconds": total, "tokens": tokens, "tokens_per_s": tokens / total, "prefill_seconds": sum(prefill)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    monitor = Monitor.load(args.bundle, dtype=args.dtype)
    with_probe = Generator(monitor, max_new_tokens=args.tokens)
    without = Generator(monitor, max_new_tokens=args.tokens, probe=False)
    for gen in (with_probe, without):
        gen.eos_ids = frozenset()  # every generation exactly --tokens long, so both arms do the same work
    chats = [[{"role": "user", "content": p}] for p in PROMPTS[: args.prompts]]
    for gen in (with_probe, without):  # warm-up: first-call allocations and lazy initialisation
        timed_generation(gen, chats[0], 4)

    times: dict[str, list[float]] = {"with": [], "without": []}
    prefill: dict[str, list[float]] = {"with": [], "without": []}
    same_tokens, ratios = True, []
    load_before = os.getloadavg()
    for r in range(args.rounds):
        for i, chat in enumerate(chats):
            order = [("with", with_probe), ("without", without)]
            if (r + i) % 2:  # ABBA: neither arm always goes first
                order.reverse()
            results = {}
            for name, gen in order:
                seconds, done = timed_generation(gen, chat, args.tokens)
                times[name].append(seconds)
                prefill[name].append(done.prefill_seconds)
                results[name] = done
            same_tokens &= results["with"].token_ids == results["without"].token_ids
            ratios.append(times["with"][-1] / times["without"][-1])
    n_tokens = args.tokens * len(chats) * args.rounds
    arms = {name: arm_summary(times[name], prefill[name], n_tokens) for name in times}
    probe_s = statistics.median(verdict_seconds(monitor, chat) for chat in chats)
    per_generation_s = arms["without"]["seconds"] / (len(chats) * args.rounds)
    return {
        "provenance": provenance(),
        "bundle": args.bundle, "model": monitor.bundle.spec["model"]["source"], "layer": monitor.bundle.layer,
        "probe_reads": monitor.bundle.inputs, "dtype": dtype_name(monitor.lm.dtype),
        "threads": torch.get_num_threads(), "malloc_tuned": args.malloc_tuned,
        # bf16 probed as `--dtype auto` probes it (a 32-row matmul only where bf16 is hopeless)
        "matmul_gflops": matmul_speeds("cpu"),
        "load_average_before_after": [load_before, os.getloadavg()],
        "prompts": len(chats), "prompt_tokens": [len(monitor.format_messages(c).input_ids) for c in chats],
        "new_tokens_per_generation": args.tokens, "rounds": args.rounds, "decoding": "greedy, end of turn ignored",
        "with_probe": arms["with"], "without_probe": arms["without"],
        "overhead_percent": 100 * (arms["with"]["seconds"] / arms["without"]["seconds"] - 1),
        "overhead_percent_median_pair": 100 * (statistics.median(ratios) - 1),
        "verdict_seconds_median": probe_s,
        "verdict_percent_of_generation": 100 * probe_s / per_generation_s,
        "identical_tokens": same_tokens,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", default="runs/monitor-full")
    ap.add_argument("--dtype", default=None, help="default: the bundle's calibration dtype")
    ap.add_argument("--tokens", type=int, default=128, help="new tokens per generation")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help=f"how many of the {len(PROMPTS)} prompts")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions of every prompt")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--out", default="benchmarks/results/generate_overhead.json")
    args = ap.parse_args()
    if not 1 <= args.prompts <= len(PROMPTS):
        ap.error(f"--prompts must be 1..{len(PROMPTS)}")
    check_args(ap, bundle=args.bundle, dtypes=args.dtype, auto_ok=False,
               at_least={"--tokens": (args.tokens, 1), "--rounds": (args.rounds, 1),
                         "--threads": (1 if args.threads is None else args.threads, 1)})
    if args.threads:
        torch.set_num_threads(args.threads)
    args.malloc_tuned = tune_malloc()
    result = run(args)
    write_json(args.out, result)  # a temporary file renamed into place: never a half-written result
    print(json.dumps({k: result[k] for k in ("dtype", "threads", "with_probe", "without_probe", "overhead_percent",
                                             "overhead_percent_median_pair", "verdict_seconds_median",
                                             "verdict_percent_of_generation", "identical_tokens")}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
