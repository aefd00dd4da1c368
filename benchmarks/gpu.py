"""assay's two heavy loops on a CUDA GPU, against the same run's matmul peaks: extraction's forward
and TopK SAE training.

Nothing is downloaded, so it runs on an offline GPU box. The model is Gemma 3 270M's architecture
(its config.json, `benchmarks/data/`) with random weights: weights do not change a forward pass's
time. The prompts are random token ids at the quick benchmark's real prompt lengths (also in
`benchmarks/data/`), batched as `extract` batches them on CUDA (longest first, 32,768 padded tokens
per batch), through `residual_stream` to layer 9: tokenisation and writing the cache are not timed.
Extraction is also timed at other token budgets, and profiled (the operators taking the GPU's time).
SAE training is assay's Trainer on random normal activations held on the GPU, k 32, widths 4,096 and
16,384, batches of 4,096 and 16,384 tokens, float32 weights (TF32 off, torch's default), with and
without the bf16 shortlist. About a minute on an H200.

    python benchmarks/gpu.py [--out benchmarks/results/gpu.json]
    python benchmarks/gpu.py --compile --out benchmarks/results/gpu-compile.json   # eager vs compiled blocks
    .venv/bin/python benchmarks/gpu.py --write-inputs   # here: refresh benchmarks/data/ from the bundled model
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))
DATA = ROOT / "benchmarks" / "data"
CONFIG, LENGTHS = DATA / "gemma-3-270m-config.json", DATA / "quick-prompt-lengths.json"
LAYER = 9

import torch  # noqa: E402
from extract import flops_to_layer  # noqa: E402  (benchmarks/extract.py: the FLOPs that benchmark counts)


def write_inputs() -> None:
    """The bundled model's config.json and the quick benchmark's chat-formatted prompt lengths."""
    from transformers import AutoTokenizer

    from assay.data import build_benchmark
    from assay.models import format_prompts
    from assay.models.loading import DEFAULT_MODEL
    from assay.models.resolve import _resolve

    source, _ = _resolve(DEFAULT_MODEL, None)
    CONFIG.write_text(json.dumps(json.loads((Path(source) / "config.json").read_text()), indent=1) + "\n")
    tokenizer = AutoTokenizer.from_pretrained(source)
    lengths = [len(p.input_ids) for p in format_prompts(tokenizer, build_benchmark("quick", 0).texts)]
    LENGTHS.write_text(json.dumps({"what": "token counts of the quick benchmark's 700 prompts, chat-formatted by the "
                                           "bundled model's tokenizer (benchmarks/gpu.py --write-inputs)",
                                   "lengths": lengths}) + "\n")


DEVICE = "cuda"  # --device cpu: a quick run of the script's own code on a machine without a GPU


def cuda_seconds(fn, reps: int) -> float:
    """Mean seconds per call on the GPU clock, after a warm-up call."""
    fn()
    if DEVICE == "cpu":
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t0) / reps
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    torch.cuda.synchronize()
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 1e3 / reps


def matmul_peak(dtype: torch.dtype) -> dict:
    """TFLOP/s over a few GEMM shapes, the model's own (tokens x 640 x 2048) among them."""
    best = {}
    for m, k, n in [(32768, 640, 2048), (32768, 2048, 640), (4096, 640, 16384), (8192, 8192, 8192)]:
        a = torch.randn(m, k, dtype=dtype, device=DEVICE)
        b = torch.randn(k, n, dtype=dtype, device=DEVICE)
        best[f"{m}x{k}x{n}"] = 2 * m * k * n / cuda_seconds(lambda: a @ b, 20 if DEVICE == "cuda" else 1) / 1e12
    return {"tflops_by_shape": best, "peak_tflops": max(best.values())}


def as_loaded(model):
    """`model` as assay's LoadedModel, without a tokenizer (the benchmark feeds token ids)."""
    from assay.models.loading import LoadedModel

    def no_tokenizer() -> None:
        raise RuntimeError("this benchmark feeds token ids: it has no tokenizer")

    return LoadedModel(model=model, load_tokenizer=no_tokenizer, name="gemma-3-270m-architecture",
                       fingerprint={"model": "random weights"})


def model_and_batches(dtype: torch.dtype, lengths: list[int], budget: int | None = None):
    """Gemma 3 270M's architecture with seeded random weights, and random ids at `lengths` in
    extract's CUDA batches (longest first, `budget` padded tokens each)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from assay.activations.batching import length_order, token_budget_batches
    from assay.activations.extraction import default_token_budget

    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "config.json").write_text(CONFIG.read_text())
        config = AutoConfig.from_pretrained(folder)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(DEVICE).eval().requires_grad_(False)
    lm = as_loaded(model)
    budget = budget or default_token_budget(torch.device(DEVICE))
    batches = []
    for idx in token_budget_batches(length_order(lengths), lengths, budget):
        longest = max(lengths[i] for i in idx)
        ids = torch.randint(10, config.vocab_size, (len(idx), longest), device=DEVICE)
        mask = torch.zeros(len(idx), longest, dtype=torch.long, device=DEVICE)
        for row, i in enumerate(idx):
            mask[row, : lengths[i]] = 1
        batches.append((ids, mask))
    return lm, config, batches, budget


def extraction(dtype: torch.dtype, lengths: list[int], budget: int | None = None, profile: bool = False) -> dict:
    from assay.activations.forward import residual_stream

    lm, config, batches, budget = model_and_batches(dtype, lengths, budget)

    def one_pass() -> None:
        for ids, mask in batches:
            residual_stream(lm, ids, mask, [LAYER])

    seconds = cuda_seconds(one_pass, 5)
    top = top_kernels(one_pass) if profile else None
    tokens = sum(lengths)
    flops = flops_to_layer(config, lengths, LAYER)
    padded = sum(ids.numel() for ids, _ in batches)
    return {"tokens": tokens, "batches": len(batches), "token_budget": budget, "padding_fraction": padded / tokens - 1,
            "seconds_per_pass": seconds, "tokens_per_s": tokens / seconds, "useful_tflop": flops / 1e12,
            "tflops": flops / seconds / 1e12,
            "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else None,
            **({"top_ops": top} if top else {})}


def compiled_extraction(dtypes: list[torch.dtype], lengths: list[int], peaks: dict) -> dict:
    """Eager vs compiled blocks (`compiled_blocks`, as `extract(compile=True)`), per dtype, on the same weights and
    batches: tokens/s, the first compiled pass's seconds, and each path's layer-9 residuals' relative
    L2 error per real token against the float32 eager ones (the same weights, cast)."""
    from assay.activations.forward import compiled_blocks, residual_stream

    base, config, batches, budget = model_and_batches(torch.float32, lengths)
    flops, tokens = flops_to_layer(config, lengths, LAYER), sum(lengths)

    def outputs(lm) -> list[torch.Tensor]:
        return [residual_stream(lm, ids, mask, [LAYER])[LAYER][mask.bool()].float() for ids, mask in batches]

    reference = outputs(base)

    def rel_error(got: list[torch.Tensor]) -> dict:
        err = torch.cat([(g - r).norm(dim=-1) / r.norm(dim=-1) for g, r in zip(got, reference)]).cpu()
        return {"median": err.median().item(), "p99": err.quantile(0.99).item(), "max": err.max().item()}

    rows = {}
    for dtype in dtypes:
        name = str(dtype).removeprefix("torch.")
        lm = base if dtype == torch.float32 else as_loaded(copy.deepcopy(base.model).to(dtype))

        def one_pass() -> None:
            for ids, mask in batches:
                residual_stream(lm, ids, mask, [LAYER])

        eager_s, eager_err = cuda_seconds(one_pass, 5), rel_error(outputs(lm))
        with compiled_blocks(lm, LAYER):  # what `extract(compile=True)` runs under
            t0 = time.perf_counter()
            one_pass()  # compiles on the first shapes it meets, then runs
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            first_s = time.perf_counter() - t0
            compiled_s = cuda_seconds(one_pass, 5)
            compiled_out = outputs(lm)
        rows[name] = {"tokens": tokens, "batches": len(batches), "token_budget": budget,
                      "eager_tokens_per_s": tokens / eager_s, "compiled_tokens_per_s": tokens / compiled_s,
                      "speedup": eager_s / compiled_s, "first_compiled_pass_seconds": first_s,
                      "eager_fraction_of_peak": flops / eager_s / 1e12 / peaks[name]["peak_tflops"],
                      "compiled_fraction_of_peak": flops / compiled_s / 1e12 / peaks[name]["peak_tflops"],
                      "rel_error_vs_float32_eager": {"eager": eager_err, "compiled": rel_error(compiled_out)}}
        print(name, json.dumps(rows[name]), flush=True)
        torch._dynamo.reset()  # the next dtype's first pass compiles afresh
    return rows


def top_kernels(fn) -> list[dict]:
    """The operators that take the device's time in one call of `fn` (CPU time on the CPU)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if DEVICE == "cuda" else [])
    with profile(activities=activities) as prof:
        fn()
        if DEVICE == "cuda":
            torch.cuda.synchronize()
    key = "self_device_time_total" if DEVICE == "cuda" else "self_cpu_time_total"
    # aten operators only: a kernel's time is also its launching operator's, so both would count it twice
    ops = [e for e in prof.key_averages() if e.key.startswith("aten::") and getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in ops)
    return [{"op": e.key, "share": round(getattr(e, key) / total, 3), "calls": e.count}
            for e in sorted(ops, key=lambda e: -getattr(e, key))[:10]]


def sae_training(width: int, search_dtype: str | None, steps: int, batch: int, k: int = 32, d_in: int = 640) -> dict:
    from assay.sae import TrainConfig, Trainer, build_sae

    torch.manual_seed(0)
    n_tok = (steps + 1) * batch
    x = torch.randn(n_tok + 2 * batch, d_in, device=DEVICE)
    sae = build_sae("topk", d_in=d_in, d_sae=width, k=k, dtype="float32")
    cfg = TrainConfig(total_tokens=n_tok, batch_size=batch, progress=False, scale_batches=1, buffer_tokens=2 * batch,
                      log_every=10**9, search_dtype=search_dtype)
    starts: list[float] = []

    class Timed(Trainer):
        def _step(self, xb: torch.Tensor) -> None:
            if len(starts) == 1 and DEVICE == "cuda":  # step 0 also sets the input scale: time from here
                torch.cuda.synchronize()
            starts.append(time.perf_counter())
            super()._step(xb)

    trainer = Timed({"topk": sae}, cfg)
    trainer.fit(x[i:i + batch] for i in range(0, n_tok + 2 * batch, batch))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - starts[1]
    assert sae.W_enc.device.type == DEVICE and trainer.state.step == steps + 1
    return {"steps_timed": steps, "batch": batch, "tokens_per_s": steps * batch / seconds,
            "bound_flop_per_token": 2 * d_in * width}


MARK = ("<!-- gpu-table:start -->", "<!-- gpu-table:end -->")
DOC = ROOT / "docs" / "scale.md"


def table(r: dict, compiled: dict | None = None, source: str = "", compiled_source: str = "") -> str:
    """docs/scale.md's measured-GPU section, every number from the result `r` (and from a `--compile`
    result, if given)."""
    prov, peak, ext = r["provenance"], r["matmul_peak"], r["extraction"]
    bf16_peak, fp32_peak = peak["bfloat16"]["peak_tflops"], peak["float32"]["peak_tflops"]

    def hours_100m(rate: float) -> str:
        minutes = 1e8 / rate / 60
        return f"{minutes:.1f} min" if minutes < 90 else f"{minutes / 60:.1f} h"

    lines = [f"Measured by `benchmarks/gpu.py` on one {', '.join(prov['hardware'].get('gpus', ['GPU']))} "
             f"(torch {prov['torch_version']}); the numbers are in `{source}`. This run's matmul "
             f"peaks: {bf16_peak:,.0f} TFLOP/s bf16, {fp32_peak:,.1f} TFLOP/s fp32 (TF32 "
             f"{'on' if r['tf32'] else 'off'}).", "",
             "| | tokens/s | fraction of | 100M tokens |", "|---|---|---|---|"]
    for name, row in ext.items():
        lines.append(f"| extraction to layer {r['layer']}, {name}, {row['token_budget']:,}-token batches | "
                     f"{row['tokens_per_s']:,.0f} | {row['fraction_of_peak']:.2f} of the {name} peak | "
                     f"{hours_100m(row['tokens_per_s'])} |")
    if compiled is not None:
        for name, row in compiled["compiled_extraction"].items():
            lines.append(f"| extraction to layer {r['layer']}, {name}, {row['token_budget']:,}-token batches, "
                         f"compiled blocks (`--compile`) | {row['compiled_tokens_per_s']:,.0f} | "
                         f"{row['compiled_fraction_of_peak']:.2f} of the {name} peak | "
                         f"{hours_100m(row['compiled_tokens_per_s'])} |")
    for key, row in r["sae_training"].items():
        batch, width, label = key.split("/")
        shortlist = ", bf16 shortlist" if label.endswith("bf16_search") else ""
        lines.append(f"| TopK SAE training, {width}, k 32, {batch}, fp32{shortlist} | {row['tokens_per_s']:,.0f} | "
                     f"{row['fraction_of_fp32_bound']:.2f} of the fp32 bound | {hours_100m(row['tokens_per_s'])} |")
    bf16 = ext["bfloat16"]
    top = ", ".join(f"{o['op'].removeprefix('aten::')} {o['share']:.2f}" for o in bf16.get("top_ops", [])[:6])
    mm_share = next((o["share"] for o in bf16.get("top_ops", []) if o["op"] == "aten::mm"), 0.0)
    scale = json.loads((ROOT / "benchmarks" / "results" / "scale.json").read_text())
    budgets = "; ".join(f"{int(b):,}: {v:,.0f}" for b, v in r["extraction_bf16_by_token_budget"].items())
    lines += [
        "",
        f"- Extraction: Gemma 3 270M's architecture with random weights (the same FLOPs), the quick benchmark's "
        f"{len(json.loads(LENGTHS.read_text())['lengths'])} prompt lengths ({bf16['tokens']:,} tokens), forward "
        f"only (tokenising and writing the cache are not timed): {bf16['useful_tflop']:.2f} TFLOP per pass, "
        f"{bf16['tflops']:.1f} TFLOP/s in bf16. Shares of the GPU's time in bf16: {top}."
        + (" The matrix products (mm) are the smaller part: the elementwise work around them (norms, activation, "
           "casts) is where a fused or compiled forward would gain." if mm_share < 0.5 else ""),
        f"- bf16 tokens/s at other padded-token budgets per batch ({budgets}) against "
        f"{bf16['tokens_per_s']:,.0f} at extract's {bf16['token_budget']:,}.",
        f"- The section above estimated extraction on one {scale['gpu_assumed']['name']} at "
        f"{scale['low_fraction_assumed']:.2f} of its bf16 peak or more; this GPU ran it at "
        f"{bf16['fraction_of_peak']:.2f} of its own.",
        "- SAE training: assay's Trainer on random normal activations held on the GPU; the bound is the dense "
        "encoder forward, 2 x d_in x width FLOP per token, at this run's fp32 peak.",
    ]
    if compiled is not None:
        lines += [compiled_note(compiled, compiled_source)]
    commits = [short(prov["git_commit"])] + ([short(compiled["provenance"]["git_commit"])] if compiled else [])
    if any(c.endswith("+dirty") for c in commits):
        lines.append(f"- `git_commit` reads {' and '.join(dict.fromkeys(commits))}: a commit ending in +dirty is the one "
                     "the GPU machine's copy of the tree started from, with uncommitted changes over it.")
    return "\n".join(lines)


def short(commit: str) -> str:
    return str(commit)[:12] + ("+dirty" if str(commit).endswith("+dirty") else "")


def compiled_note(c: dict, source: str) -> str:
    """What compiling the blocks bought in the `--compile` run `c`, and what it cost."""
    bf16, fp32 = c["compiled_extraction"]["bfloat16"], c["compiled_extraction"]["float32"]
    eager_s, compiled_s = bf16["tokens"] / bf16["eager_tokens_per_s"], bf16["tokens"] / bf16["compiled_tokens_per_s"]
    # the first pass's extra seconds over the seconds each further pass saves, in tokens
    break_even = (bf16["first_compiled_pass_seconds"] - compiled_s) * bf16["tokens"] / (eager_s - compiled_s)
    err = bf16["rel_error_vs_float32_eager"]
    return (f"- Compiled blocks (`assay activations extract --compile`; a separate run, "
            f"`gpu.py --compile`, in `{source}`, commit {short(c['provenance']['git_commit'])}, peaks "
            f"{c['matmul_peak']['bfloat16']['peak_tflops']:,.0f} / {c['matmul_peak']['float32']['peak_tflops']:.1f} "
            f"TFLOP/s): {bf16['speedup']:.2f}x the eager tokens/s in bf16 ({bf16['eager_tokens_per_s']:,.0f} -> "
            f"{bf16['compiled_tokens_per_s']:,.0f}) and {fp32['speedup']:.2f}x in fp32. The first compiled pass takes "
            f"{bf16['first_compiled_pass_seconds']:.1f} s, so in bf16 compiling pays after about "
            f"{break_even / 1e6:.0f} million tokens. Relative error per token against float32 eager, median / max: "
            f"{err['eager']['median']:.4f} / {err['eager']['max']:.3f} eager, {err['compiled']['median']:.4f} / "
            f"{err['compiled']['max']:.3f} compiled (random weights: a trained model's outlier tokens are not tested).")


def render(result_path: Path, doc: Path = DOC, compiled_path: Path | None = None) -> None:
    """Write `table` of the result into `doc` between the markers."""
    for path in (result_path, compiled_path):
        if path is not None and not path.is_file():
            raise SystemExit(f"{path}: no such result; pass a JSON written by benchmarks/gpu.py --out")
    if not doc.is_file():
        raise SystemExit(f"{doc}: no such page to write the GPU section into (--doc)")
    text = doc.read_text()
    if MARK[0] not in text or MARK[1] not in text:
        raise SystemExit(f"{doc} has no {MARK[0]} ... {MARK[1]} markers to write the GPU section between")
    head, rest = text.split(MARK[0], 1)
    compiled = json.loads(compiled_path.read_text()) if compiled_path is not None else None
    if compiled is not None and "compiled_extraction" not in compiled:
        raise SystemExit(f"{compiled_path} is not a --compile result (no compiled_extraction in it)")
    def shown(path: Path | None) -> str:  # as the repo names it, wherever the command ran from
        return "" if path is None else path.resolve().relative_to(ROOT).as_posix() \
            if path.resolve().is_relative_to(ROOT) else path.name

    section = table(json.loads(result_path.read_text()), compiled, shown(result_path), shown(compiled_path))
    doc.write_text(head + MARK[0] + "\n" + section + "\n" + MARK[1]
                   + rest.split(MARK[1], 1)[1])
    print(f"wrote the GPU section of {doc} from {result_path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write-inputs", action="store_true", help="refresh benchmarks/data/ from the bundled model")
    ap.add_argument("--render", metavar="RESULT_JSON", help="only write docs/scale.md's GPU section from a result")
    ap.add_argument("--doc", default=str(DOC), help="the page --render writes into")
    ap.add_argument("--compiled", metavar="COMPILE_JSON", help="with --render: also a --compile run's result")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--batches", default="4096,16384", help="SAE training batch sizes (tokens per step)")
    ap.add_argument("--token-budgets", default="8192,131072", help="extraction's other padded-token budgets")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--max-prompts", type=int, default=None, help="only the first N prompt lengths (a quick check)")
    ap.add_argument("--compile", action="store_true", help="only eager vs torch.compile'd extraction, per dtype")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "gpu.json"))
    args = ap.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.token_budgets = [int(b) for b in args.token_budgets.split(",") if b]
    if args.write_inputs:
        write_inputs()
        return
    if args.compiled and not args.render:
        raise SystemExit("--compiled goes with --render: it adds a --compile result to the rendered section")
    if args.render:
        render(Path(args.render), Path(args.doc), Path(args.compiled) if args.compiled else None)
        return
    global DEVICE
    DEVICE = args.device
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py needs a CUDA GPU; none is visible here")
    from assay.provenance import provenance

    lengths = json.loads(LENGTHS.read_text())["lengths"][: args.max_prompts]
    result: dict = {"provenance": provenance(), "benchmark": "gpu", "device": DEVICE, "layer": LAYER,
                    "matmul_peak": {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)},
                    "tf32": torch.backends.cuda.matmul.allow_tf32, "extraction": {}, "sae_training": {}}
    if args.compile:
        result["compiled_extraction"] = compiled_extraction([torch.bfloat16, torch.float32], lengths,
                                                            result["matmul_peak"])
        result.pop("extraction"), result.pop("sae_training")
        write(result, Path(args.out))
        return
    for name, dtype in [("bfloat16", torch.bfloat16), ("float32", torch.float32)]:
        row = extraction(dtype, lengths, profile=True)
        row["fraction_of_peak"] = row["tflops"] / result["matmul_peak"][name]["peak_tflops"]
        result["extraction"][name] = row
        print(name, json.dumps(row), flush=True)
    # extract's CUDA budget (32,768 padded tokens per batch) against smaller and larger ones, in bf16
    result["extraction_bf16_by_token_budget"] = {
        budget: extraction(torch.bfloat16, lengths, budget)["tokens_per_s"] for budget in args.token_budgets}
    print("bf16 tokens/s by token budget", result["extraction_bf16_by_token_budget"], flush=True)
    fp32_peak = result["matmul_peak"]["float32"]["peak_tflops"] * 1e12
    for batch in args.batches:
        for width in (4096, 16384):
            for label, search in [("float32", None), ("float32_bf16_search", "bfloat16")]:
                row = sae_training(width, search, args.steps, batch)
                row["fraction_of_fp32_bound"] = row["tokens_per_s"] * row["bound_flop_per_token"] / fp32_peak
                result["sae_training"][f"batch {batch}/width {width}/{label}"] = row
                print(batch, width, label, json.dumps(row), flush=True)
    write(result, Path(args.out))


def write(result: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
