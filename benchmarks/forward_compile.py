"""Would `torch.compile` pay for extraction? Eager vs compiled decoder blocks, per dtype, one run.

assay's extraction runs the model eagerly. This times its forward (`residual_stream` to layer 9) on
real benchmark prompts, in the length-sorted token-budget batches `extract` forms, first eagerly and
then with every block up to the layer compiled by inductor (`dynamic=True`, so new batch shapes do
not recompile). It records the compile's own seconds, tokens/s both ways, the eager profile's top
operators, and how far each path's layer-9 residuals on real tokens sit from the float32 eager ones
(relative L2 error per token: bf16 rounding alone moves them; the question is whether compiling
moves them further).

    .venv/bin/python benchmarks/forward_compile.py [--n 240] [--dtypes auto] [--out benchmarks/results/forward_compile.json]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

# An empty inductor cache: the first compiled pass then costs what it costs on a fresh machine
# (a warm cache from an earlier run makes it several times shorter).
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="inductor-"))

import torch  # noqa: E402
from checks import check_args  # noqa: E402

from assay.activations.batching import length_order, token_budget_batches  # noqa: E402
from assay.activations.extraction import pad_prompts  # noqa: E402
from assay.activations.forward import residual_stream  # noqa: E402
from assay.data import build_benchmark  # noqa: E402
from assay.models import format_prompts, load  # noqa: E402
from assay.provenance import provenance  # noqa: E402
from assay.runtime import choose_dtype, tune_malloc  # noqa: E402

LAYER = 9


def batches(prompts, pad_id: int, budget: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(ids, attention mask) of each batch, padded as `extract` pads them."""
    lengths = [len(p.input_ids) for p in prompts]
    out = []
    for idx in token_budget_batches(length_order(lengths), lengths, budget):
        ids, mask, _, _ = pad_prompts([prompts[i] for i in idx], pad_id, torch.device("cpu"))
        out.append((ids, mask))
    return out


def forward_all(lm, data) -> tuple[float, list[torch.Tensor]]:
    """Seconds for one pass over every batch, and the layer's residuals on real tokens (fp32)."""
    t0 = time.perf_counter()
    outs = [residual_stream(lm, ids, mask, [LAYER])[LAYER][mask.bool()].float() for ids, mask in data]
    return time.perf_counter() - t0, outs


def rel_error(got: list[torch.Tensor], ref: list[torch.Tensor]) -> dict[str, float]:
    err = torch.cat([(g - r).norm(dim=-1) / r.norm(dim=-1) for g, r in zip(got, ref)])
    return {"median": err.median().item(), "p99": err.quantile(0.99).item(), "max": err.max().item()}


def top_ops(lm, data) -> list[dict]:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        forward_all(lm, data)
    total = sum(e.self_cpu_time_total for e in prof.key_averages())
    rows = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)[:8]
    return [{"op": e.key, "share": round(e.self_cpu_time_total / total, 3)} for e in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=240, help="prompts (sampled from the quick benchmark)")
    ap.add_argument("--budget", type=int, default=4096, help="padded tokens per batch (extract's CPU default)")
    ap.add_argument("--dtypes", default="auto", help="comma-separated, or auto: float32, and bfloat16 where "
                    "--dtype auto would pick it")
    ap.add_argument("--out", default="benchmarks/results/forward_compile.json")
    args = ap.parse_args()
    check_args(ap, at_least={"--n": (args.n, 1), "--budget": (args.budget, 2)}, n_prompts=args.n, dtypes=args.dtypes)
    malloc_tuned = tune_malloc()
    texts = random.Random(0).sample(build_benchmark("quick", 0).texts, args.n)
    dtypes = args.dtypes.split(",")
    if args.dtypes == "auto":
        chosen, _ = choose_dtype("auto", "cpu")
        dtypes = ["float32"] + (["bfloat16"] if chosen == "bfloat16" else [])
    result = {"provenance": provenance(), "n_prompts": args.n, "layer": LAYER, "token_budget": args.budget,
              "threads": torch.get_num_threads(), "malloc_tuned": malloc_tuned,
              "inductor_cache": os.environ["TORCHINDUCTOR_CACHE_DIR"], "by_dtype": {}}
    reference = None
    for name in dtypes:
        lm = load("gemma-3-270m", dtype=name, device="cpu")
        data = batches(format_prompts(lm.tokenizer, texts), lm.tokenizer.pad_token_id, args.budget)
        tokens = sum(int(mask.sum()) for _, mask in data)
        forward_all(lm, data[:2])  # warm-up
        eager_s, eager = forward_all(lm, data)
        if reference is None:
            reference = eager  # the first dtype is float32: the reference
        profile = top_ops(lm, data)
        for block in lm.blocks[: LAYER + 1]:
            block.compile(dynamic=True)
        compile_s, _ = forward_all(lm, data)  # compiles on the first shapes it meets, then runs
        compiled_s, compiled = forward_all(lm, data)
        row = {"tokens": tokens, "batches": len(data), "eager_seconds": eager_s, "compiled_seconds": compiled_s,
               "first_compiled_pass_seconds": compile_s, "eager_tokens_per_s": tokens / eager_s,
               "compiled_tokens_per_s": tokens / compiled_s, "speedup": eager_s / compiled_s,
               # the first pass's extra seconds over the seconds saved per token
               "break_even_tokens": (compile_s - compiled_s) * tokens / (eager_s - compiled_s)
               if compiled_s < eager_s else None,
               "rel_error_vs_float32_eager": {"eager": rel_error(eager, reference),
                                              "compiled": rel_error(compiled, reference)},
               "eager_top_ops": profile}
        result["by_dtype"][name] = row
        print(json.dumps({name: {k: v for k, v in row.items() if k != "eager_top_ops"}}, indent=1), flush=True)
        torch._dynamo.reset()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
