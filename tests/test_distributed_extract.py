"""Extraction split across processes: parts (torchrun ranks or `--shard i/n`) write one cache entry
that equals the single-process one, the last part writes the manifest, a killed part resumes."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from assay.activations import extract
from assay.activations.store import MANIFEST

TEXTS = [f"prompt number {i} " + "about baking bread and other things " * (i % 7) for i in range(40)]


def same_entry(a, b) -> None:
    """Every tensor of every shard equal, bit for bit."""
    shards = sorted(p.name for p in a.path.glob("shard-*.safetensors"))
    assert shards == sorted(p.name for p in b.path.glob("shard-*.safetensors")) and len(shards) > 2
    for name in shards:
        x, y = load_file(str(a.path / name)), load_file(str(b.path / name))
        assert x.keys() == y.keys()
        for k in x:
            assert torch.equal(x[k], y[k]), (name, k)


@pytest.mark.parametrize("compile", [False, True])
def test_parts_write_the_single_process_entry(tiny, tmp_path, compile):
    opts = dict(layers=[1, 2], shard_tokens=64, progress=False, compile=compile)
    whole = extract(tiny, TEXTS, root=tmp_path / "one", **opts)
    assert extract(tiny, TEXTS, root=tmp_path / "two", part=(1, 3), **opts) is None
    assert extract(tiny, TEXTS, root=tmp_path / "two", part=(0, 3), **opts) is None
    entry = next((tmp_path / "two").iterdir())
    assert not __import__("json").loads((entry / MANIFEST).read_text())["complete"]
    # `assay activations list` counts the parts' finished shards, which only their records beside them name
    from assay.activations import list_entries

    [row] = list_entries(tmp_path / "two")
    assert not row["complete"] and row["shards_done"] == len(list(entry.glob("shard-*.safetensors")))
    assert 0 < row["shards_done"] < row["shards"]
    parted = extract(tiny, TEXTS, root=tmp_path / "two", part=(2, 3), **opts)  # the last part writes the manifest
    assert parted is not None and parted.path.name == whole.path.name
    same_entry(parted, whole)
    assert torch.equal(parted.pooled(2, "all.mean"), whole.pooled(2, "all.mean"))
    # and the finished entry is what a later single-process call reuses, extracting nothing
    again = extract(tiny, TEXTS, root=tmp_path / "two", **opts)
    assert again.path == parted.path


def test_a_killed_part_redoes_only_its_missing_shards(tiny, tmp_path, monkeypatch):
    import assay.activations.extraction as extraction

    opts = dict(layers=[1], shard_tokens=64, progress=False, root=tmp_path)
    real = extraction._extract_shard
    done = []

    def dies_after_two(*a, **k):
        if len(done) == 2:
            raise KeyboardInterrupt
        done.append(a[2][0])
        return real(*a, **k)

    monkeypatch.setattr(extraction, "_extract_shard", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        extract(tiny, TEXTS, part=(0, 2), **opts)
    monkeypatch.setattr(extraction, "_extract_shard", lambda *a, **k: (done.append(a[2][0]), real(*a, **k))[1])
    first_two = list(done)
    assert extract(tiny, TEXTS, part=(1, 2), **opts) is None  # part 0 is not finished
    n_after_part1 = len(done)
    acts = extract(tiny, TEXTS, part=(0, 2), **opts)
    assert acts is not None
    redone = done[n_after_part1:]
    assert not set(redone) & set(first_two)  # part 0's finished shards were kept
    same_entry(acts, extract(tiny, TEXTS, layers=[1], shard_tokens=64, progress=False, root=tmp_path / "ref"))


def test_a_part_given_another_shard_size_is_refused_not_replanned(tiny, tmp_path):
    """One array task launched with another --shard-tokens would re-plan the entry: the other parts'
    finished shards dropped, and parts running at once each waiting for shards the other's plan never
    makes. It is refused, naming the size the entry is being filled with; with that size it finishes."""
    from assay.errors import ConfigMismatchError

    opts = dict(layers=[1], progress=False, root=tmp_path)
    assert extract(tiny, TEXTS, part=(0, 2), shard_tokens=64, **opts) is None
    entry = next(tmp_path.iterdir())
    before = sorted(p.name for p in entry.glob("shard-*"))
    with pytest.raises(ConfigMismatchError, match="--shard-tokens 64"):
        extract(tiny, TEXTS, part=(1, 2), shard_tokens=128, **opts)
    assert sorted(p.name for p in entry.glob("shard-*")) == before  # part 0's work is still there
    acts = extract(tiny, TEXTS, part=(1, 2), shard_tokens=64, **opts)
    same_entry(acts, extract(tiny, TEXTS, layers=[1], shard_tokens=64, progress=False, root=tmp_path / "ref"))


def test_starting_over_under_another_shard_size_leaves_no_stale_shards(tiny, tmp_path):
    """One process may resume an unfinished entry under another shard size (it starts over); the
    abandoned plan's shards and parts' records beyond the new plan's count are removed."""
    opts = dict(layers=[1], progress=False, root=tmp_path)
    assert extract(tiny, TEXTS, part=(0, 2), shard_tokens=64, **opts) is None
    entry = next(tmp_path.iterdir())
    assert len(list(entry.glob("shard-*.safetensors"))) > 2
    acts = extract(tiny, TEXTS, shard_tokens=1 << 15, **opts)
    assert len(acts.manifest["shards"]) == 1
    assert sorted(p.name for p in entry.glob("shard-*")) == ["shard-00000.safetensors"]
    ref = extract(tiny, TEXTS, layers=[1], shard_tokens=1 << 15, progress=False, root=tmp_path / "ref")
    x, y = load_file(str(acts.path / "shard-00000.safetensors")), load_file(str(ref.path / "shard-00000.safetensors"))
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_bad_part_is_refused(tiny, tmp_path):
    from assay.distributed import parse_part
    from assay.errors import InputError

    for bad in ("2/2", "1", "a/b", "-1/2", "0/0"):
        with pytest.raises(InputError, match="i/n"):
            parse_part(bad)
    assert parse_part(" 3 / 8 ") == (3, 8)
    with pytest.raises(ValueError, match="0 <= i < n"):
        extract(tiny, TEXTS, layers=[1], part=(2, 2), root=tmp_path, progress=False)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None,
                    reason="torchrun not installed beside this Python")
def test_torchrun_two_ranks_equal_one_process(tiny, tmp_path):
    """The real launcher: `torchrun --nproc-per-node 2 -m assay activations extract` on a saved model."""
    model = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS)))
    args = ["activations", "extract", "--data", str(data), "--model", str(model), "--dtype", "float32",
            "--layer", "1", "--layer", "2", "--no-tokens", "--shard-tokens", "64"]
    env = {**os.environ, "ASSAY_CACHE": str(tmp_path / "ranks"), "OMP_NUM_THREADS": "1"}
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    run = subprocess.run([torchrun, "--nproc-per-node", "2", "--master-port", "0", "-m", "assay", *args],
                         env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "(part 0/2)" in run.stderr and "(part 1/2)" in run.stderr, run.stderr  # each rank did its share
    single = subprocess.run([sys.executable, "-m", "assay", *args], capture_output=True, text=True, timeout=600,
                            env={**env, "ASSAY_CACHE": str(tmp_path / "single")})
    assert single.returncode == 0, single.stdout + single.stderr
    from assay.activations.store import ActivationSet

    [a] = list((tmp_path / "ranks" / "activations").iterdir())
    [b] = list((tmp_path / "single" / "activations").iterdir())
    assert a.name == b.name
    same_entry(ActivationSet(a), ActivationSet(b))


def test_shard_option_as_an_array_job_would_run_it(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assay.activations.cli import app
    from assay.errors import AssayError

    model = tmp_path / "tiny-model"
    tiny.model.save_pretrained(model)
    tiny.tokenizer.save_pretrained(model)
    data = tmp_path / "d.csv"
    data.write_text("text,label\n" + "".join(f"{t},{i % 2}\n" for i, t in enumerate(TEXTS)))
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    base = ["extract", "--data", str(data), "--model", str(model), "--dtype", "float32", "--layer", "1",
            "--shard-tokens", "64"]
    env = {"COLUMNS": "400", "NO_COLOR": "1"}
    first = CliRunner().invoke(app, [*base, "--shard", "1/2"], env=env)
    assert first.exit_code == 0 and "part 1/2 finished" in first.output, first.output
    listed = CliRunner().invoke(app, ["list"], env=env)
    assert re.search(r"no \((\d+)/(\d+) shards\)", listed.output), listed.output
    last = CliRunner().invoke(app, [*base, "--shard", "0/2"], env=env)
    assert last.exit_code == 0 and "->" in last.output, last.output  # the last part gets the whole entry
    bad = CliRunner().invoke(app, [*base, "--shard", "2/2"], env=env)
    assert isinstance(bad.exception, AssayError) and "i/n" in str(bad.exception)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    both = CliRunner().invoke(app, [*base, "--shard", "0/2"], env=env)
    assert both.exit_code == 2 and "torchrun already gives each rank its part" in both.output
