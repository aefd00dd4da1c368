"""Per-prompt reuse: re-labelling, re-splitting, subsetting or extending a dataset runs the model
only on prompts no compatible cache entry holds, and reads the rest bit for bit from there."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import torch

from assay.activations import CacheCorruptError, extract
from assay.activations.store import ActivationSet, _VERIFIED, read_manifest
from assay.models.chat import format_prompts
from tests.conftest import PROMPTS

extract_mod = importlib.import_module("assay.activations.extraction")
NEW = ["Translate 'good morning' into French.", "List three prime numbers above fifty."]
FEATS = ("all.mean", "user.mean", "resp-5")


@pytest.fixture
def forwards(monkeypatch):
    """The prompts the model is run on, by text index within each call's `texts`."""
    seen: list[list[int]] = []
    real = extract_mod._extract_shard

    def counting(lm, prompts, members, *args, **kwargs):
        seen.append(list(members))
        return real(lm, prompts, members, *args, **kwargs)

    monkeypatch.setattr(extract_mod, "_extract_shard", counting)
    return seen


def ran(forwards) -> list[int]:
    return sorted(i for members in forwards for i in members)


def rows_sorted(x: torch.Tensor) -> torch.Tensor:
    """The rows in lexicographic order: a stream's tokens as a multiset."""
    return x[np.lexsort(x.numpy().T[::-1])]


def assert_same_rows(a: ActivationSet, rows_a, b: ActivationSet, rows_b, layer: int = 1) -> None:
    for feat in FEATS:
        assert torch.equal(a.pooled(layer, feat)[rows_a], b.pooled(layer, feat)[rows_b])
    for i, j in zip(rows_a, rows_b):
        for x, y in zip(a.example_tokens(layer, i), b.example_tokens(layer, j)):
            assert torch.equal(x, y)


def test_resplit_reads_every_prompt_from_the_first_entry(tiny, tmp_path, forwards):
    first = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    forwards.clear()
    relabelled = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, dataset_fingerprint="new split labels")
    assert forwards == [] and relabelled.key != first.key
    assert not list(relabelled.path.glob("shard-*"))  # it holds views, not copies
    rows = list(range(len(PROMPTS)))
    assert_same_rows(relabelled, rows, first, rows)
    assert torch.equal(relabelled.token_counts(), first.token_counts())
    assert torch.equal(rows_sorted(torch.cat(list(relabelled.iter_tokens(1, chunk_tokens=1000)))),
                       rows_sorted(torch.cat(list(first.iter_tokens(1, chunk_tokens=1000)))))


def test_subset_in_another_order_runs_nothing_and_streams_only_its_tokens(tiny, tmp_path, forwards):
    full = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    order = [4, 0, 3]
    forwards.clear()
    sub = extract(tiny, [PROMPTS[i] for i in order], 1, root=tmp_path, progress=False)
    assert forwards == [] and sub.n == 3
    assert_same_rows(sub, [0, 1, 2], full, order)
    n_tokens = sum(len(p.input_ids) - 1 for p in format_prompts(tiny.tokenizer, [PROMPTS[i] for i in order]))
    halves = [torch.cat(list(sub.iter_tokens(1, chunk_tokens=7, shuffle_seed=3, part=(r, 2)))) for r in (0, 1)]
    whole = torch.cat(list(sub.iter_tokens(1, chunk_tokens=7, shuffle_seed=3)))
    assert len(whole) == n_tokens and torch.equal(rows_sorted(torch.cat(halves)), rows_sorted(whole))
    only = sum(len(c) for c in sub.iter_tokens(1, chunk_tokens=5, indices=[1]))
    assert only == len(format_prompts(tiny.tokenizer, [PROMPTS[0]])[0].input_ids) - 1


def test_extending_a_dataset_runs_only_the_new_prompts(tiny, tmp_path, forwards):
    old = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    forwards.clear()
    grown = extract(tiny, PROMPTS + NEW, 1, root=tmp_path, progress=False)
    new_rows = [len(PROMPTS) + j for j in range(len(NEW))]
    assert ran(forwards) == new_rows
    assert_same_rows(grown, list(range(len(PROMPTS))), old, list(range(len(PROMPTS))))
    alone = extract(tiny, NEW, 1, root=tmp_path / "alone", progress=False)
    for feat in FEATS:
        torch.testing.assert_close(grown.pooled(1, feat)[new_rows], alone.pooled(1, feat), rtol=1e-5, atol=1e-5)
    # and the grown entry's own new shard donates in turn
    forwards.clear()
    extract(tiny, NEW[::-1] + PROMPTS[:2], 1, root=tmp_path, progress=False)
    assert forwards == []


def test_reuse_needs_what_the_new_entry_stores(tiny, tmp_path, forwards):
    extract(tiny, PROMPTS, [1, 2], root=tmp_path, progress=False, store_tokens=False, aggregations=FEATS)
    forwards.clear()
    fewer = extract(tiny, PROMPTS, [2], root=tmp_path, progress=False, store_tokens=False, aggregations=FEATS[:1])
    assert forwards == []  # fewer layers, fewer aggregations: all there
    assert fewer.layers == [2] and fewer.aggregations == ["all.mean"]
    for args in ({"store_tokens": True, "aggregations": FEATS},        # tokens were not stored
                 {"store_tokens": False, "aggregations": ("all.max",)},  # an aggregation that was not pooled
                 {"store_tokens": False, "aggregations": FEATS, "chat": False}):  # other token ids
        forwards.clear()
        extract(tiny, PROMPTS, [1], root=tmp_path, progress=False, **args)
        assert ran(forwards) == list(range(len(PROMPTS))), args
    forwards.clear()
    extract(tiny, PROMPTS, [1, 3], root=tmp_path, progress=False, store_tokens=False, aggregations=FEATS)
    assert ran(forwards) == list(range(len(PROMPTS)))  # layer 3 is in no entry


def test_a_prompt_given_twice_is_extracted_not_borrowed(tiny, tmp_path, forwards):
    base = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    forwards.clear()
    texts = [PROMPTS[1], PROMPTS[1], PROMPTS[2]]
    twice = extract(tiny, texts, 1, root=tmp_path, progress=False)
    assert ran(forwards) == [0, 1]
    assert_same_rows(twice, [2], base, [2])
    torch.testing.assert_close(twice.pooled(1, "all.mean")[[0, 1]], base.pooled(1, "all.mean")[[1, 1]],
                               rtol=1e-5, atol=1e-5)


def test_removed_donor_is_named_then_its_prompts_are_extracted_again(tiny, tmp_path, forwards):
    import shutil

    donor = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    want = donor.pooled(1, "user.mean").clone()
    view = extract(tiny, PROMPTS[:4] + NEW, 1, root=tmp_path, progress=False, dataset_fingerprint="v")
    shutil.rmtree(donor.path)
    _VERIFIED.clear()
    with pytest.raises(CacheCorruptError, match=f"borrows from entry {donor.key}"):
        ActivationSet(view.path).pooled(1, "user.mean")
    forwards.clear()
    again = extract(tiny, PROMPTS[:4] + NEW, 1, root=tmp_path, progress=False, dataset_fingerprint="v")
    assert again.key == view.key and ran(forwards) == list(range(6))
    torch.testing.assert_close(again.pooled(1, "user.mean")[:4], want[:4], rtol=1e-5, atol=1e-5)
    assert not list(again.path.glob("view-*"))  # the stale views went with the old plan


def test_rm_names_the_entries_that_reused_it(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assay.cli import app

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    donor = extract(tiny, PROMPTS, 1, progress=False)
    view = extract(tiny, PROMPTS[:3], 1, progress=False)
    out = CliRunner().invoke(app, ["activations", "rm", donor.key], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert out.exit_code == 0, out.output
    assert "1 other entries reused its prompts" in out.output and view.key in out.output
    out = CliRunner().invoke(app, ["activations", "rm", "--all"], env={"COLUMNS": "400", "NO_COLOR": "1"})
    assert out.exit_code == 0 and "reused" not in out.output


@pytest.mark.parametrize("field,value", [("entry", ".."), ("entry", "a/b"), ("view", "../x"), ("view_sha256", None)])
def test_borrowed_record_pointing_outside_the_cache_is_a_foreign_manifest(tiny, tmp_path, caplog, field, value):
    extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    view = extract(tiny, PROMPTS[:3], 1, root=tmp_path, progress=False)
    manifest = json.loads((view.path / "manifest.json").read_text())
    record = next(s for s in manifest["shards"] if "entry" in s)
    record[field] = value
    (view.path / "manifest.json").write_text(json.dumps(manifest))
    assert read_manifest(view.path) is None and "malformed shard record" in caplog.text
    rebuilt = extract(tiny, PROMPTS[:3], 1, root=tmp_path, progress=False)
    assert rebuilt.manifest["complete"]


class Killed(Exception):
    pass


def test_interrupted_borrower_resumes_its_own_shards(tiny, tmp_path, monkeypatch):
    extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    real = extract_mod._extract_shard
    calls: list[list[int]] = []
    killed: list[bool] = []

    def crash_on_second(lm, prompts, members, *args, **kwargs):
        calls.append(list(members))
        if len(calls) == 2 and not killed:
            killed.append(True)
            raise Killed
        return real(lm, prompts, members, *args, **kwargs)

    monkeypatch.setattr(extract_mod, "_extract_shard", crash_on_second)
    texts = PROMPTS + NEW + [f"Name a colour, number {i}." for i in range(6)]
    with pytest.raises(Killed):
        extract(tiny, texts, 1, root=tmp_path, progress=False, shard_tokens=40)
    done, started = calls[0], calls[1]
    calls.clear()
    resumed = extract(tiny, texts, 1, root=tmp_path, progress=False, shard_tokens=40)
    ran_now = sorted(i for m in calls for i in m)
    assert started[0] in ran_now and not set(done) & set(ran_now)  # the killed shard ran again, the done one not
    assert all(i >= len(PROMPTS) for i in done + ran_now)
    assert sorted(done + ran_now) == list(range(len(PROMPTS), len(texts)))
    fresh = extract(tiny, texts, 1, root=tmp_path / "fresh", progress=False)
    torch.testing.assert_close(resumed.pooled(1, "all.mean"), fresh.pooled(1, "all.mean"), rtol=1e-5, atol=1e-5)


def test_reuse_false_extracts_everything_into_its_own_shards(tiny, tmp_path, forwards):
    extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    forwards.clear()
    own = extract(tiny, PROMPTS[:3], 1, root=tmp_path, progress=False, reuse=False)
    assert ran(forwards) == [0, 1, 2] and not list(own.path.glob("view-*"))


def test_parts_borrow_alike_and_together_complete_the_entry(tiny, tmp_path, forwards):
    """Two parts (a Slurm array's, or torchrun's ranks) each find the same donor shards: between
    them they run every new prompt once and no borrowed one."""
    extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    texts = PROMPTS[:4] + NEW + [f"Name a colour, number {i}." for i in range(6)]
    forwards.clear()
    first = extract(tiny, texts, 1, root=tmp_path, progress=False, shard_tokens=40, part=(0, 2))
    second = extract(tiny, texts, 1, root=tmp_path, progress=False, shard_tokens=40, part=(1, 2))
    assert first is None and second is not None and second.manifest["complete"]
    assert ran(forwards) == list(range(4, len(texts)))
    alone = extract(tiny, texts, 1, root=tmp_path / "alone", progress=False)
    torch.testing.assert_close(second.pooled(1, "all.mean"), alone.pooled(1, "all.mean"), rtol=1e-5, atol=1e-5)
