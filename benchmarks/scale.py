"""What a 100M-token job costs: measured here, estimated on GPUs, with the arithmetic (docs/scale.md).

One run measures, on this machine: the matmul peak (fp32 and bf16), extraction at layer L of the
bundled model on real benchmark prompts (tokens/s, useful FLOP per token, fraction of the same run's
peak in the dtype used), the bytes a cached token takes on disk, and the TopK SAE trainer's tokens/s
at width 16,384 against its bound (the dense encoder forward, 2 x d_in x width FLOP per token).
From those and stated GPU assumptions it estimates tokens/s per GPU and the time for 100M tokens,
then writes benchmarks/results/scale.json and the table between the markers in docs/scale.md.

    .venv/bin/python benchmarks/scale.py [--n 64] [--layer 9] [--dtype auto]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from checks import check_args  # noqa: E402
from extract import flops_to_layer, matmul_peak  # noqa: E402

from assay.activations import extract  # noqa: E402
from assay.data import build_benchmark  # noqa: E402
from assay.fileio import write_json  # noqa: E402
from assay.models import format_prompts, load  # noqa: E402
from assay.provenance import provenance  # noqa: E402
from assay.runtime import choose_dtype, tune_malloc  # noqa: E402
from assay.sae import TrainConfig, Trainer, build_sae  # noqa: E402

# The GPU the estimates are for: NVIDIA's H100 SXM data sheet, dense (no sparsity). Extraction runs in
# bf16 on tensor cores; the SAE trainer trains in float32, and PyTorch leaves TF32 off by default, so
# its matmuls get the plain fp32 peak.
GPU = {"name": "H100 SXM", "bf16_tflops": 989.0, "fp32_tflops": 67.0, "source": "NVIDIA H100 data sheet, dense"}
# Fractions of that peak assumed reachable there. The low one is a guess for a small model's short
# sequences (launch- and memory-bound); the high one reuses the fraction measured here on the CPU.
LOW_FRACTION = 0.2
NVLINK_GBS = 450.0  # H100 SXM NVLink 4: 900 GB/s both ways, 450 each way
TOKENS = 100_000_000
MARK = ("<!-- scale-table:start -->", "<!-- scale-table:end -->")


def measure_extraction(dtype: str, n: int, layer: int) -> dict:
    lm = load("gemma-3-270m", dtype=dtype, device="cpu")
    texts = random.Random(0).sample(build_benchmark("quick", 0).texts, n)
    lengths = [len(p.input_ids) for p in format_prompts(lm.tokenizer, texts)]
    flops = flops_to_layer(lm.model.config, lengths, layer)
    peak = matmul_peak(lm.dtype)["peak_gflops"]
    extract(lm, texts[:4], layer, root=tempfile.mkdtemp(), progress=False)  # warm-up
    with tempfile.TemporaryDirectory() as root:
        t0 = time.perf_counter()
        acts = extract(lm, texts, layer, root=root, progress=False, store_tokens=True)
        seconds = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in acts.path.iterdir())
        token_bytes = rows = 0
        for shard in acts.path.glob("shard-*.safetensors"):
            with safe_open(str(shard), "pt") as f:
                t = f.get_slice(f"tokens.L{layer}")
                shape = t.get_shape()
                token_bytes += shape[0] * shape[1] * t[0:1].element_size()  # as stored: one row read for its dtype
                rows += shape[0]
    tokens = sum(lengths)
    return {"dtype": str(lm.dtype).removeprefix("torch."), "prompts": n, "tokens": tokens, "seconds": seconds,
            "tokens_per_s": tokens / seconds, "flop_per_token": flops / tokens, "gflops": flops / seconds / 1e9,
            "matmul_peak_gflops": peak, "fraction_of_peak": flops / seconds / 1e9 / peak,
            "d_model": lm.d_model, "entry_bytes": disk, "entry_bytes_per_token": disk / tokens,
            "stored_tokens": rows, "token_tensor_bytes_per_stored_token": token_bytes / rows}


def measure_sae(width: int, k: int, batch: int, steps: int, d_in: int) -> dict:
    x = torch.randn((steps + 2) * batch, d_in)
    cfg = TrainConfig(total_tokens=steps * batch, batch_size=batch, progress=False, scale_batches=1,
                      buffer_tokens=2 * batch, dead_after_tokens=2 * batch, log_every=10**9)
    Trainer({"w": build_sae("topk", d_in=d_in, d_sae=width, k=k)},
            TrainConfig(**{**cfg.__dict__, "total_tokens": 2 * batch})).fit([x[:2 * batch]])  # warm-up
    t0 = time.perf_counter()
    Trainer({"topk": build_sae("topk", d_in=d_in, d_sae=width, k=k)}, cfg).fit(
        x[i:i + batch] for i in range(0, len(x), batch))
    seconds = time.perf_counter() - t0
    peak = matmul_peak(torch.float32)["peak_gflops"]
    bound_flop = 2 * d_in * width
    rate = steps * batch / seconds
    return {"dtype": "float32", "width": width, "k": k, "batch": batch, "steps": steps, "d_in": d_in,
            "tokens_per_s": rate, "bound_flop_per_token": bound_flop, "matmul_peak_gflops": peak,
            "bound_tokens_per_s": peak * 1e9 / bound_flop, "fraction_of_bound": rate * bound_flop / (peak * 1e9)}


DDP_BATCH = 8192  # the global batch the 8-GPU SAE estimate is for


def allreduce_seconds(sae: dict) -> float:
    """A ring all-reduce of the float32 encoder and decoder gradients over 8 GPUs: 2 x 7/8 of them sent."""
    return 2 * 7 / 8 * (2 * sae["d_in"] * sae["width"] * 4) / (NVLINK_GBS * 1e9)


def estimates(ext: dict, sae: dict) -> dict:
    """Tokens/s on one GPU = peak x fraction / FLOP per token. 8 GPUs: extraction 8x (no
    communication); SAE training pays the gradient all-reduce once a step (not overlapped)."""
    out = {}
    for label, fraction in (("low", LOW_FRACTION), ("measured_fraction", ext["fraction_of_peak"])):
        ext_rate = GPU["bf16_tflops"] * 1e12 * fraction / ext["flop_per_token"]
        sae_fraction = LOW_FRACTION if label == "low" else sae["fraction_of_bound"]
        sae_rate = GPU["fp32_tflops"] * 1e12 * sae_fraction / sae["bound_flop_per_token"]
        out[label] = {"extraction_fraction": fraction, "extraction_tokens_per_s": ext_rate,
                      "sae_fraction": sae_fraction, "sae_tokens_per_s": sae_rate,
                      "extraction_hours_100m_1gpu": TOKENS / ext_rate / 3600,
                      "extraction_hours_100m_8gpu": TOKENS / ext_rate / 8 / 3600,
                      "sae_hours_100m_1gpu": TOKENS / sae_rate / 3600}
        step = DDP_BATCH / (8 * sae_rate) + allreduce_seconds(sae)
        out[label].update(sae_8gpu_tokens_per_s=DDP_BATCH / step, sae_hours_100m_8gpu=TOKENS / (DDP_BATCH / step) / 3600)
    return out


def _dur(hours: float) -> str:
    """A duration in the unit that reads best."""
    if hours >= 2:
        return f"{hours:,.1f} h"
    if hours * 60 >= 2:
        return f"{hours * 60:,.1f} min"
    return f"{hours * 3600:,.0f} s"


def table(r: dict) -> str:
    ext, sae, est = r["extraction"], r["sae_training"], r["estimates"]
    gb_per_m = ext["d_model"] * 2 * 1e6 / 1e9
    grad_mb = 2 * sae["d_in"] * sae["width"] * 4 / 1e6
    allreduce_ms = allreduce_seconds(sae) * 1e3
    step_ms = [DDP_BATCH / (8 * est[f]["sae_tokens_per_s"]) * 1e3 for f in ("low", "measured_fraction")]
    here_h = TOKENS / ext["tokens_per_s"] / 3600
    lines = [
        f"Measured by `benchmarks/scale.py` at commit {str(r['provenance'].get('git_commit'))[:12]} on {r['cpu']} "
        f"({r['threads']} threads); written with the numbers in `benchmarks/results/scale.json`.", "",
        "| | measured here (CPU) | estimated, one " + GPU["name"] + " | estimated, 8 GPUs |", "|---|---|---|---|",
        f"| extraction, layer {r['layer']} of gemma-3-270m, tokens/s | {ext['tokens_per_s']:,.0f} ({ext['dtype']}) | "
        f"{est['low']['extraction_tokens_per_s']:,.0f} to {est['measured_fraction']['extraction_tokens_per_s']:,.0f} | "
        f"{8 * est['low']['extraction_tokens_per_s']:,.0f} to {8 * est['measured_fraction']['extraction_tokens_per_s']:,.0f} |",
        f"| extraction of 100M tokens | {_dur(here_h)} | {_dur(est['measured_fraction']['extraction_hours_100m_1gpu'])} to "
        f"{_dur(est['low']['extraction_hours_100m_1gpu'])} | {_dur(est['measured_fraction']['extraction_hours_100m_8gpu'])} "
        f"to {_dur(est['low']['extraction_hours_100m_8gpu'])} |",
        f"| TopK SAE training, width {sae['width']:,}, k {sae['k']}, tokens/s | {sae['tokens_per_s']:,.0f} ({sae['dtype']}) | "
        f"{est['low']['sae_tokens_per_s']:,.0f} to {est['measured_fraction']['sae_tokens_per_s']:,.0f} | "
        f"{est['low']['sae_8gpu_tokens_per_s']:,.0f} to {est['measured_fraction']['sae_8gpu_tokens_per_s']:,.0f} |",
        f"| SAE training on 100M tokens | {_dur(TOKENS / sae['tokens_per_s'] / 3600)} | "
        f"{_dur(est['measured_fraction']['sae_hours_100m_1gpu'])} to {_dur(est['low']['sae_hours_100m_1gpu'])} | "
        f"{_dur(est['measured_fraction']['sae_hours_100m_8gpu'])} to {_dur(est['low']['sae_hours_100m_8gpu'])} |",
        f"| disk per million tokens per layer, bf16 | {gb_per_m:.2f} GB tensor; whole cache entry "
        f"{ext['entry_bytes_per_token'] * 1e6 / 1e9:.2f} GB ({ext['dtype']}) | same | same |",
        "", "The arithmetic:", "",
        f"- Extraction FLOP per token: {ext['flop_per_token'] / 1e6:,.1f} MFLOP (projections, MLP and attention of "
        f"blocks 0..{r['layer']}, real tokens only, at these prompts' lengths). Here: {ext['gflops']:,.1f} GFLOP/s = "
        f"{ext['fraction_of_peak']:.2f} of this run's {ext['dtype']} matmul peak ({ext['matmul_peak_gflops']:,.1f} GFLOP/s).",
        f"- One {GPU['name']}: {GPU['bf16_tflops']:,.0f} TFLOP/s bf16 dense ({GPU['source']}) x fraction / FLOP per "
        f"token, at an assumed {LOW_FRACTION:.2f} (a small model's short sequences keep a GPU far from peak) up to "
        f"the {ext['fraction_of_peak']:.2f} measured here: {GPU['bf16_tflops']:,.0f}e12 x {LOW_FRACTION:.2f} / "
        f"{ext['flop_per_token']:,.0f} = {est['low']['extraction_tokens_per_s']:,.0f} tokens/s. Estimates, not "
        "measurements: what one GPU measured is in the next section.",
        f"- 8 GPUs: extraction 8x (its ranks never talk to each other). A DDP step all-reduces the SAE's "
        f"gradients, 2 x {sae['d_in']} x {sae['width']:,} x 4 bytes = {grad_mb:.0f} MB; a ring all-reduce sends "
        f"2 x 7/8 of that per GPU, {allreduce_ms:.2f} ms at an assumed {NVLINK_GBS:.0f} GB/s of NVLink, after "
        f"{step_ms[1]:.1f} to {step_ms[0]:.1f} ms of compute per GPU for a global batch of {DDP_BATCH:,}; "
        f"so 8 GPUs train {DDP_BATCH:,} / (compute + all-reduce) tokens/s, not 8x one GPU. A larger global "
        "batch shrinks the all-reduce's share.",
        f"- SAE bound: 2 x d_in x width = 2 x {sae['d_in']} x {sae['width']:,} = {sae['bound_flop_per_token'] / 1e6:.1f} "
        f"MFLOP per token; here {sae['tokens_per_s']:,.0f} tokens/s = {sae['fraction_of_bound']:.2f} of the "
        f"{sae['bound_tokens_per_s']:,.0f} tokens/s that this run's fp32 peak ({sae['matmul_peak_gflops']:,.1f} "
        f"GFLOP/s) allows. On the GPU: its fp32 peak, {GPU['fp32_tflops']:.0f} TFLOP/s (the trainer is float32 and "
        f"TF32 is off by default), x {LOW_FRACTION:.2f} to {sae['fraction_of_bound']:.2f} / "
        f"{sae['bound_flop_per_token']:,} FLOP.",
        f"- Disk: d_model x 2 bytes = {ext['d_model']} x 2 = {ext['d_model'] * 2:,} bytes per token per layer in bf16, "
        f"{gb_per_m:.2f} GB per million tokens, {gb_per_m * 100:.0f} GB for 100M. Measured here: the token tensor "
        f"takes {ext['token_tensor_bytes_per_stored_token']:,.0f} bytes per stored token in {ext['dtype']}, the whole "
        f"entry (roles, offsets, pooled features, manifest) {ext['entry_bytes_per_token']:,.0f} per prompt token.",
        f"- 100M tokens here: 1e8 / {ext['tokens_per_s']:,.0f} tokens/s = {_dur(here_h)} of extraction on this CPU.",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=64, help="benchmark prompts to extract")
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--dtype", default="auto", help="extraction dtype (auto: what this CPU multiplies fastest)")
    ap.add_argument("--sae-steps", type=int, default=6)
    ap.add_argument("--out", default="benchmarks/results/scale.json")
    ap.add_argument("--doc", default="docs/scale.md")
    ap.add_argument("--render", action="store_true", help="only redo the estimates and the table from --out's "
                    "measurements (no measuring)")
    args = ap.parse_args()
    if args.render:
        if not Path(args.out).is_file():
            ap.error(f"--render re-renders the measurements in --out, and {args.out} is not there; run without "
                     "--render to measure first")
        result = json.loads(Path(args.out).read_text())
        result.update(gpu_assumed=GPU, low_fraction_assumed=LOW_FRACTION, nvlink_gbs_assumed=NVLINK_GBS,
                      estimates=estimates(result["extraction"], result["sae_training"]))
        return publish(result, args)
    check_args(ap, at_least={"--n": (args.n, 1), "--sae-steps": (args.sae_steps, 1)}, n_prompts=args.n,
               layer=args.layer, dtypes=args.dtype)
    tuned = tune_malloc()
    dtype, why = choose_dtype(args.dtype)
    ext = measure_extraction(dtype, args.n, args.layer)
    sae = measure_sae(16_384, 32, 4096, args.sae_steps, ext["d_model"])
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "unknown CPU") if Path("/proc/cpuinfo").exists() else "unknown CPU"
    result = {"provenance": provenance(), "cpu": cpu, "threads": torch.get_num_threads(), "malloc_tuned": tuned,
              "dtype_choice": why, "layer": args.layer, "gpu_assumed": GPU, "low_fraction_assumed": LOW_FRACTION,
              "nvlink_gbs_assumed": NVLINK_GBS, "ddp_batch": DDP_BATCH,
              "extraction": ext, "sae_training": sae, "estimates": estimates(ext, sae)}
    publish(result, args)


def publish(result: dict, args: argparse.Namespace) -> None:
    result["table_markdown"] = table(result)
    write_json(Path(args.out), result)
    doc = Path(args.doc)
    text = doc.read_text()
    if MARK[0] in text and MARK[1] in text:
        head, rest = text.split(MARK[0], 1)
        doc.write_text(head + MARK[0] + "\n" + result["table_markdown"] + "\n" + MARK[1] + rest.split(MARK[1], 1)[1])
    print(result["table_markdown"])
    print(f"wrote {args.out} and the table in {args.doc}")


if __name__ == "__main__":
    main()
