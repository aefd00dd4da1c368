"""SAE training with DDP (torchrun, gloo on this CPU): two ranks equal one process at the same global
batch, every rank holds the same SAE, and a run whose rank is killed resumes to the same result."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from assay.sae.buffer import shuffled_batches
from assay.sae.io import load_sae
from assay.sae.trainer import Trainer

sys.path.insert(0, str(Path(__file__).parent))
import ddp_train_worker as worker  # noqa: E402

TORCHRUN = os.path.join(os.path.dirname(sys.executable), "torchrun")
WORKER = str(Path(__file__).parent / "ddp_train_worker.py")
pytestmark = pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                                reason="torchrun not installed beside this Python")


def torchrun(out: Path, arch: str, *extra: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parents[1] / "src")}
    return subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", "--max-restarts", "0", WORKER,
                           str(out), arch, *extra], env=env, capture_output=True, text=True, timeout=300)


def one_process(arch: str, out: Path, monkeypatch, world: int = 2) -> None:
    """The same global batches in one process: each step's batch is the ranks' local batches joined."""
    cfg = worker.config()
    data = worker.chunks()
    local = [list(shuffled_batches(data[r::world], cfg.batch_size // world, cfg.buffer_tokens // world,
                                   seed=cfg.seed + 1_000_003 * r)) for r in range(world)]
    steps = min(len(b) for b in local)
    joined = [torch.cat([local[r][i] for r in range(world)]) for i in range(steps)]
    monkeypatch.setattr("assay.sae.trainer.shuffled_batches", lambda *a, **k: iter(joined))
    Trainer({arch: worker.sae(arch)}, cfg, out).fit(iter(()))


def weights(path: Path) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in load_sae(path).state_dict().items()}


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["topk", "jumprelu", "qf_jumprelu"])
def test_two_ranks_equal_one_process_at_the_same_global_batch(arch, tmp_path, monkeypatch):
    run = torchrun(tmp_path / "ddp", arch)
    assert run.returncode == 0, run.stdout + run.stderr
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks["max_difference_between_ranks"] == 0.0 and ranks["steps"] == 36  # bit-identical ranks
    one_process(arch, tmp_path / "one", monkeypatch)
    a, b = weights(tmp_path / "ddp"), weights(tmp_path / "one")
    for k in a:
        # float tolerance: the two runs sum the same gradients in a different order
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=f"{arch} {k}")
    moved = float((a["W_dec"] - weights_at_init(arch)["W_dec"]).abs().max())
    assert moved > 1e-2  # it trained (equal because trained alike, not because nothing moved)
    hist_ddp = json.loads((tmp_path / "ddp" / "training.json").read_text())["history"]
    hist_one = json.loads((tmp_path / "one" / "training.json").read_text())["history"]
    # the logged numbers are the whole batch's, not rank 0's half of it
    for h, g in zip(hist_ddp, hist_one, strict=True):
        assert h["tokens"] == g["tokens"]
        assert h[arch]["l0"] == pytest.approx(g[arch]["l0"], rel=1e-4)
        assert h[arch]["fvu"] == pytest.approx(g[arch]["fvu"], rel=1e-3)


def weights_at_init(arch: str) -> dict[str, torch.Tensor]:
    return {k: v.double() for k, v in worker.sae(arch).state_dict().items()}


@pytest.mark.slow
def test_batchtopk_ranks_agree_on_the_running_threshold(tmp_path):
    """BatchTopK keeps the top k x batch of each *local* batch (documented), but its threshold buffer
    is averaged, so the ranks still end with one SAE."""
    run = torchrun(tmp_path / "ddp", "batchtopk")
    assert run.returncode == 0, run.stdout + run.stderr
    ranks = json.loads((tmp_path / "ddp" / "ranks.json").read_text())
    assert ranks["max_difference_between_ranks"] == 0.0
    assert float(load_sae(tmp_path / "ddp").threshold.max()) > 0


@pytest.mark.slow
def test_a_killed_rank_resumes_to_the_unbroken_result(tmp_path, monkeypatch):
    out = tmp_path / "ddp"
    died = torchrun(out, "topk", "--die-at", "11")
    assert died.returncode != 0
    assert (out / "checkpoint.pt").exists() and not (out / "sae_weights.safetensors").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["state"]["step"] == 8  # checkpoints every 4 steps
    resumed = torchrun(out, "topk", "--resume")
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert "resumed at step 8" in resumed.stderr
    assert not (out / "checkpoint.pt").exists()
    one_process("topk", tmp_path / "one", monkeypatch)
    a, b = weights(out), weights(tmp_path / "one")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.slow
def test_a_resume_at_another_rank_count_is_refused(tmp_path):
    out = tmp_path / "ddp"
    assert torchrun(out, "topk", "--die-at", "6").returncode != 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([TORCHRUN, "--nproc-per-node", "1", "--standalone", WORKER, str(out), "topk",
                          "--resume"], env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode != 0
    assert "ranks: checkpoint 2, now 1" in one.stderr, one.stderr[-2000:]


def test_token_parts_together_are_the_whole_stream(tiny, tmp_path):
    """`iter_tokens(part=(i, n))`: rank i's slice of every chunk; the n parts hold exactly the whole
    stream's tokens, in near-equal shares, so no token is lost or trained on twice."""
    from assay.activations import extract

    texts = [f"text {i} " + "words and more words " * (i % 9) for i in range(30)]
    acts = extract(tiny, texts, [1], shard_tokens=64, progress=False, root=tmp_path, aggregations=("all.mean",))

    def rows(x: torch.Tensor) -> list[tuple[float, ...]]:  # the rows as a multiset (sorted, exactly)
        return sorted(map(tuple, x.tolist()))

    for seed in (None, 4):
        whole = list(acts.iter_tokens(1, 16, shuffle_seed=seed))
        parts = [list(acts.iter_tokens(1, 16, shuffle_seed=seed, part=(i, 3))) for i in range(3)]
        n = sum(map(len, whole))
        assert len(whole) > 6 and all(abs(sum(map(len, p)) - n / 3) < len(whole) for p in parts)  # balanced
        assert rows(torch.cat([c for p in parts for c in p])) == rows(torch.cat(whole))
    with pytest.raises(ValueError, match="0 <= i < n"):
        next(acts.iter_tokens(1, 16, part=(3, 3)))


@pytest.mark.slow
def test_sae_train_command_under_torchrun(tiny, tmp_path):
    """`torchrun --nproc-per-node 2 -m assay sae train`: the ranks extract the corpus into one cache entry,
    train one SAE with DDP, and rank 0 writes it, recording the rank count."""
    model = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    out = tmp_path / "sae"
    env = {**os.environ, "ASSAY_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    args = ["-m", "assay", "sae", "train", "--model", str(model), "--dtype", "float32", "--layer", "1",
            "--width", "64", "--k", "8", "--tokens", "3000", "--batch-size", "64", "--max-tokens", "64",
            "--out", str(out)]
    run = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", *args], env=env, capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert len(list((tmp_path / "cache" / "activations").iterdir())) == 1  # one shared entry, not one per rank
    assert run.stdout.count("  dead ") == 1  # one report, from rank 0
    training = json.loads((out / "training.json").read_text())
    assert training["ranks"] == 2 and training["complete"] and training["tokens"] >= 2900
    odd = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", *args[:-2], "--out", str(tmp_path / "o2"),
                          "--batch-size", "63"], env=env, capture_output=True, text=True, timeout=600)
    assert odd.returncode != 0 and "not a multiple of the 2 ranks" in odd.stderr + odd.stdout


@pytest.mark.slow
def test_the_study_sae_stage_under_torchrun_is_reused_by_the_study(tiny, tmp_path, monkeypatch):
    """`torchrun ... -m assay experiment saes`, then the one-process study: it trains nothing again."""
    from assay.experiment import run_study
    from conftest import toy_benchmark
    from ddp_study_worker import study_config

    data = str(toy_benchmark(tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ASSAY_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(Path(__file__).parents[1] / "src")])}
    run = subprocess.run([TORCHRUN, "--nproc-per-node", "2", "--standalone", str(Path(__file__).parent /
                          "ddp_study_worker.py"), data, str(tmp_path / "saes")], env=env, capture_output=True,
                         text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "rank 0: result" in run.stdout and "rank 1: no result" in run.stdout
    rows = json.loads((tmp_path / "saes" / "saes.json").read_text())["saes"]
    assert len(rows) == 4
    for d in (tmp_path / "cache" / "sae").iterdir():
        assert json.loads((d / "training.json").read_text())["ranks"] == 2

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr("assay.models.load", lambda *a, **k: tiny)
    monkeypatch.setattr(Trainer, "fit", lambda *a, **k: pytest.fail("trained an SAE again"))
    report = run_study(study_config(data), tmp_path / "study", progress=False)
    assert len(report.diagnostics["sae_provenance"]) == 4


def test_ranks_leave_only_once_all_have_left_the_last_collective(monkeypatch):
    """The exit rendezvous counts ranks on the store: a rank waits for the last one to arrive, and
    gives up (False) rather than hang when a rank never comes (torchrun reports a dead one)."""
    import threading
    import time

    from assay.distributed import _all_done_with_gloo

    monkeypatch.delenv("TORCHELASTIC_RESTART_COUNT", raising=False)
    store = torch.distributed.HashStore()
    late = threading.Timer(0.3, lambda: store.add("assay/left-0", 1))
    started = time.monotonic()
    late.start()
    assert _all_done_with_gloo(store, 2) is True and time.monotonic() - started >= 0.25
    alone = torch.distributed.HashStore()
    assert _all_done_with_gloo(alone, 2, timeout_s=0.2) is False
