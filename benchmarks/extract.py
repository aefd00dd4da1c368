"""Extraction throughput: assay's layer-L extraction vs a naive `output_hidden_states` forward.

One run, same inputs (real benchmark prompts of mixed lengths), same dtype on both sides, for fp32
and, where `--dtype auto` would pick it, bf16 (on AVX2-only CPUs bf16 runs ~50x slower, which would
take hours here; `--dtypes float32,bfloat16` times it anyway). Reports tokens/s of each path, the speed-up, and ours as a fraction of the peak matmul
throughput of that dtype measured in the same run (useful FLOPs: real tokens only, counted up to
the layer). For bf16 it also profiles where our time goes.

    .venv/bin/python benchmarks/extract.py [--n 96] [--layer 9] [--out benchmarks/results/extract.json]
"""

from __future__ import annotations

import argparse
import inspect
import json
import random
import tempfile
import time
from pathlib import Path

import torch
from checks import check_args  # benchmarks/checks.py
from peak import matmul_peak  # benchmarks/peak.py (scale.py imports it from here)

from assay.activations import extract
from assay.activations.batching import token_budget_batches
from assay.activations.extraction import _own_plan, default_token_budget
from assay.data import build_benchmark
from assay.models import format_prompts, load
from assay.provenance import provenance
from assay.runtime import choose_dtype, tune_malloc


def flops_to_layer(cfg, lengths: list[int], layer: int) -> float:
    """Forward FLOPs of blocks 0..layer for unpadded prompts: projections, MLP, attention scores."""
    d, h, kv, hd, ff = (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                        cfg.head_dim, cfg.intermediate_size)
    per_token_linear = 2 * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * ff)
    total = 0.0
    for b in range(layer + 1):
        window = cfg.sliding_window if cfg.layer_types[b] == "sliding_attention" else None
        for n in lengths:
            ctx = sum(min(i + 1, window or n) for i in range(n))  # keys each query attends to
            total += n * per_token_linear + 2 * 2 * h * hd * ctx  # QK^T and AV
    return total


def padding_fraction(lengths: list[int], device: torch.device) -> float:
    """Padded tokens per real token in the batches `extract` forms at its defaults (its own shard
    plan, each shard cut into token-budget batches), minus one."""
    shard_tokens = inspect.signature(extract).parameters["shard_tokens"].default
    padded = 0
    for shard in _own_plan(lengths, set(), shard_tokens):
        for batch in token_budget_batches(shard, lengths, default_token_budget(device)):
            padded += len(batch) * max(lengths[i] for i in batch)
    return padded / sum(lengths) - 1


def timed_extract(lm, texts, layer: int) -> float:
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        extract(lm, texts, layer, root=root, progress=False, store_tokens=True)
        return time.perf_counter() - t0


def naive(lm, prompts, batch_size: int) -> float:
    """Plain fixed-size batches in dataset order, full forward with every hidden state."""
    t0 = time.perf_counter()
    with torch.inference_mode():
        for s in range(0, len(prompts), batch_size):
            batch = prompts[s: s + batch_size]
            longest = max(len(p.input_ids) for p in batch)
            ids = torch.full((len(batch), longest), lm.tokenizer.pad_token_id)
            attn = torch.zeros(len(batch), longest, dtype=torch.long)
            for j, p in enumerate(batch):
                ids[j, : len(p.input_ids)] = torch.tensor(p.input_ids)
                attn[j, : len(p.input_ids)] = 1
            lm.model(input_ids=ids, attention_mask=attn, output_hidden_states=True)
    return time.perf_counter() - t0


def profile_ours(lm, texts, layer: int) -> list[dict]:
    """Top operators by self CPU time for one extraction (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with tempfile.TemporaryDirectory() as root, profile(activities=[ProfilerActivity.CPU]) as prof:
        extract(lm, texts, layer, root=root, progress=False, store_tokens=True)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:12]
    return [{"op": e.key, "self_seconds": e.self_cpu_time_total / 1e6,
             "share": e.self_cpu_time_total / total} for e in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=96, help="prompts (sampled from the quick benchmark)")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--batch-size", type=int, default=8, help="naive path's fixed batch size")
    ap.add_argument("--dtypes", default="auto", help="comma-separated, or auto: float32, and bfloat16 where "
                    "--dtype auto would pick it")
    ap.add_argument("--whole", action=argparse.BooleanOptionalAction, default=True,
                    help="also time ours on every prompt of the quick benchmark")
    ap.add_argument("--out", default="benchmarks/results/extract.json")
    args = ap.parse_args()
    check_args(ap, at_least={"--n": (args.n, 1), "--batch-size": (args.batch_size, 1)}, n_prompts=args.n,
               layer=args.layer, dtypes=args.dtypes)
    malloc_tuned = tune_malloc()
    ds = build_benchmark("quick", 0)
    texts = random.Random(0).sample(ds.texts, args.n)
    results = {"provenance": provenance(), "n_prompts": args.n, "layer": args.layer,
               "threads": torch.get_num_threads(), "malloc_tuned": malloc_tuned, "by_dtype": {}}
    dtypes = args.dtypes.split(",")
    if args.dtypes == "auto":
        chosen, why = choose_dtype("auto", "cpu")
        dtypes = ["float32"] + (["bfloat16"] if chosen == "bfloat16" else [])
        results["dtype_auto"] = {"chose": chosen, **why}
        if chosen != "bfloat16":
            results["not_timed"] = {"bfloat16": f"--dtype auto chose float32 here (bf16 matmul {why['bfloat16_gflops']} "
                                                f"GFLOP/s, fp32 {why['float32_gflops']}); --dtypes float32,bfloat16 "
                                                "times it anyway"}
    for dtype_name in dtypes:
        lm = load("gemma-3-270m", dtype=dtype_name, device="cpu")
        dtype = lm.dtype
        prompts = format_prompts(lm.tokenizer, texts)
        lengths = [len(p.input_ids) for p in prompts]
        n_tokens = sum(lengths)
        flops = flops_to_layer(lm.model.config, lengths, args.layer)
        peak = matmul_peak(dtype)
        extract(lm, texts[:4], args.layer, root=tempfile.mkdtemp(), progress=False)  # warm-up
        ours_s = timed_extract(lm, texts, args.layer)
        naive_s = naive(lm, prompts, args.batch_size)
        row = {
            "tokens": n_tokens, "min_len": min(lengths), "max_len": max(lengths),
            "naive_seconds": naive_s, "naive_tokens_per_s": n_tokens / naive_s,
            "ours_seconds": ours_s, "ours_tokens_per_s": n_tokens / ours_s,
            "speedup": naive_s / ours_s,
            "useful_gflop": flops / 1e9, "ours_gflops": flops / ours_s / 1e9,
            "matmul": peak, "ours_fraction_of_peak": flops / ours_s / 1e9 / peak["peak_gflops"],
            "padding_fraction": padding_fraction(lengths, lm.device),
        }
        if args.whole:
            all_lengths = [len(p.input_ids) for p in format_prompts(lm.tokenizer, ds.texts)]
            all_flops = flops_to_layer(lm.model.config, all_lengths, args.layer)
            whole_s = timed_extract(lm, ds.texts, args.layer)
            row["whole_benchmark"] = {
                "n_prompts": len(ds.texts), "tokens": sum(all_lengths), "seconds": whole_s,
                "tokens_per_s": sum(all_lengths) / whole_s, "useful_gflop": all_flops / 1e9,
                "gflops": all_flops / whole_s / 1e9,
                "fraction_of_peak": all_flops / whole_s / 1e9 / peak["peak_gflops"],
                "padding_fraction": padding_fraction(all_lengths, lm.device),
            }
        if dtype == torch.bfloat16:
            row["profile_top_ops"] = profile_ours(lm, texts[: max(8, args.n // 4)], args.layer)
        results["by_dtype"][dtype_name] = row
        print(json.dumps({dtype_name: {k: v for k, v in row.items() if k not in ("profile_top_ops", "matmul")}}, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
