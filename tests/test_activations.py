"""Extraction equals transformers' hidden states; batching never changes the numbers; the cache
round-trips, resumes and refuses corrupt shards."""

from __future__ import annotations

import functools
import importlib
import logging

import pytest
import torch

from assay.activations import CacheCorruptError, extract
from assay.activations.aggregation import Aggregation, pool, pool_tokens, token_mask
from assay.fileio import read_json
from assay.models.chat import Role, format_prompts
from tests.conftest import PROMPTS

extract_mod = importlib.import_module("assay.activations.extraction")  # the module, not the function


def reference_hidden(lm, prompt_ids, layer):
    """transformers' own `output_hidden_states` for one unpadded prompt, BOS dropped."""
    with torch.no_grad():
        out = lm.model(input_ids=torch.tensor([prompt_ids], device=lm.device), output_hidden_states=True)
    return out.hidden_states[layer + 1][0, 1:].float().cpu()


@pytest.mark.parametrize("layer", [0, 1, 2])
def test_tokens_match_output_hidden_states_tiny(tiny, tmp_path, layer):
    acts = extract(tiny, PROMPTS, [layer, 2], root=tmp_path, progress=False, token_budget=64)
    for i, p in enumerate(format_prompts(tiny.tokenizer, PROMPTS)):
        x, roles, ids = acts.example_tokens(layer, i)
        ref = reference_hidden(tiny, p.input_ids, layer)
        torch.testing.assert_close(x, ref, rtol=1e-5, atol=1e-5)
        assert ids.tolist() == p.input_ids[1:]
        assert (roles == Role.USER).sum() > 0


def test_pooled_features_match_reference_pooling(tiny, tmp_path):
    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    prompts = format_prompts(tiny.tokenizer, PROMPTS)
    for i, p in enumerate(prompts):
        ref = reference_hidden(tiny, p.input_ids, 1)
        user = torch.tensor(p.roles[1:]) == Role.USER
        torch.testing.assert_close(acts.pooled(1, "user.mean")[i], ref[user].mean(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(acts.pooled(1, "all.max")[i], ref.amax(0), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(acts.pooled(1, "all.last")[i], ref[-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(acts.pooled(1, "user.last")[i], ref[user][-1], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(acts.pooled(1, "last8.mean")[i], ref[-8:].mean(0), rtol=1e-5, atol=1e-5)
        # resp-5: five tokens before the first response token, i.e. Gemma's <end_of_turn>.
        torch.testing.assert_close(acts.pooled(1, "resp-5")[i], ref[len(p.input_ids) - 5 - 1], rtol=1e-5, atol=1e-5)
        assert tiny.tokenizer.convert_ids_to_tokens(p.input_ids[-5]) == "<end_of_turn>"


def test_same_text_same_activations_alone_batched_and_reordered(tiny, tmp_path):
    together = extract(tiny, PROMPTS, 2, root=tmp_path / "a", progress=False, token_budget=4096)
    reversed_ = extract(tiny, PROMPTS[::-1], 2, root=tmp_path / "b", progress=False, token_budget=100)
    for i, text in enumerate(PROMPTS):
        alone = extract(tiny, [text], 2, root=tmp_path / f"alone{i}", progress=False)
        j = len(PROMPTS) - 1 - i
        for feat in ("user.mean", "all.max", "resp-5"):
            torch.testing.assert_close(together.pooled(2, feat)[i], alone.pooled(2, feat)[0], rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(reversed_.pooled(2, feat)[j], alone.pooled(2, feat)[0], rtol=1e-5, atol=1e-5)


def test_cache_roundtrip_reuses_entry(tiny, tmp_path, monkeypatch):
    first = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    monkeypatch.setattr(extract_mod, "residual_stream", lambda *a, **k: pytest.fail("recomputed a cached entry"))
    second = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    assert second.path == first.path
    assert torch.equal(first.pooled(1, "user.mean"), second.pooled(1, "user.mean"))


def test_cache_key_changes_with_what_changes_the_numbers(tiny, tmp_path):
    base = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False).key
    assert extract(tiny, PROMPTS, 2, root=tmp_path, progress=False).key != base
    assert extract(tiny, PROMPTS[:-1], 1, root=tmp_path, progress=False).key != base
    assert extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, dataset_fingerprint="x").key != base
    assert extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, aggregations=["all.mean"]).key != base


class SimulatedCrash(Exception):
    pass


def test_interrupted_extraction_resumes_from_last_complete_shard(tiny, tmp_path, monkeypatch):
    real = extract_mod._extract_shard
    calls = []
    crashed = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3 and not crashed:
            crashed.append(True)
            raise SimulatedCrash  # the job dies during the third shard
        return real(*args, **kwargs)

    monkeypatch.setattr(extract_mod, "_extract_shard", flaky)
    with pytest.raises(SimulatedCrash):
        extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    n_shards = len(next(tmp_path.iterdir()).joinpath("manifest.json").read_text().split('"file"')) - 1
    assert n_shards == 2  # two shards finished before the interruption
    calls.clear()
    resumed = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    total = len(resumed.manifest["shards"])
    assert total > 3 and len(calls) == total - 2  # only the unfinished shards ran again
    fresh = extract(tiny, PROMPTS, 1, root=tmp_path / "fresh", progress=False, shard_tokens=40)
    assert torch.equal(resumed.pooled(1, "all.mean"), fresh.pooled(1, "all.mean"))


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_shard_is_detected_then_reextracted(tiny, tmp_path, damage):
    from assay.activations.store import ActivationSet, _VERIFIED

    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    want = acts.pooled(1, "user.mean").clone()
    shard = acts.path / acts.manifest["shards"][0]["file"]
    data = bytearray(shard.read_bytes())
    if damage == "flip":
        data[-100] ^= 0xFF
    else:
        data = data[: len(data) // 2]
    shard.write_bytes(bytes(data))
    _VERIFIED.clear()
    with pytest.raises(CacheCorruptError, match="checksum"):
        ActivationSet(acts.path).pooled(1, "user.mean")
    again = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    assert torch.equal(again.pooled(1, "user.mean"), want)


@pytest.mark.parametrize("manifest", ["{not json", "[1, 2]", '{"spec": {}}', '{"spec": 3, "shards": null}'])
def test_corrupt_manifest_is_a_foreign_entry_rebuilt_bitwise(tiny, tmp_path, caplog, manifest):
    """A garbled manifest.json: listed as corrupt (the other entries still listed), refused with a
    clear error when read, and rebuilt by the next extraction with the same numbers."""
    from assay.activations import list_entries
    from assay.activations.store import ActivationSet, _VERIFIED

    other = extract(tiny, PROMPTS[:2], 1, root=tmp_path, progress=False)
    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    want = _shard_tensors(acts.path)
    pooled = acts.pooled(1, "user.mean").clone()
    (acts.path / "manifest.json").write_text(manifest)
    rows = {r["key"]: r for r in list_entries(tmp_path)}
    assert rows[acts.key]["corrupt"] and not rows[other.key]["corrupt"] and rows[other.key]["complete"]
    assert acts.key in caplog.text
    caplog.clear()  # said once: the next scans of the cache (every extraction makes one) stay quiet
    list_entries(tmp_path)
    assert acts.key not in caplog.text
    with pytest.raises(CacheCorruptError, match="unreadable manifest"):
        ActivationSet(acts.path)
    _VERIFIED.clear()
    again = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    assert again.key == acts.key and torch.equal(again.pooled(1, "user.mean"), pooled)
    got = _shard_tensors(again.path)
    assert got.keys() == want.keys() and all(torch.equal(v, got[k]) for k, v in want.items())


def _edit_manifest(path, change):
    import json

    m = json.loads((path / "manifest.json").read_text())
    change(m)
    (path / "manifest.json").write_text(json.dumps(m))


@pytest.mark.parametrize("edit", [
    lambda m: m.update(n_examples=2),  # counts that do not add up: read past the data
    lambda m: m["spec"].pop("dtype"),  # a field `list` shows
    lambda m: m["shards"][0].update(file="../../elsewhere.safetensors"),  # reads outside the entry
    lambda m: m["shards"].__setitem__(0, None),  # "complete" with a shard missing
    lambda m: m["spec"]["model"].pop("model"),
])
def test_edited_manifest_is_corrupt_listed_and_rebuilt(tiny, tmp_path, edit):
    """A hand-edited manifest crashed `list` (KeyError), was listed as complete, or was reused with
    counts that do not match its data."""
    from assay.activations import list_entries
    from assay.activations.store import _VERIFIED

    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    want = _shard_tensors(acts.path)
    _edit_manifest(acts.path, edit)
    (row,) = list_entries(tmp_path)
    assert row.get("corrupt") and not row["complete"]  # not listed as a usable entry
    _VERIFIED.clear()
    again = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    got = _shard_tensors(again.path)
    assert again.n == len(PROMPTS) and got.keys() == want.keys() and all(torch.equal(v, got[k]) for k, v in want.items())


def test_manifest_with_wrong_count_for_its_spec_is_rebuilt(tiny, tmp_path):
    """A manifest kept readable but with another example count indexed past its data on reuse."""
    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    want = acts.pooled(1, "user.mean").clone()

    def shrink(m):  # a consistent-looking but wrong manifest: one example fewer everywhere
        m["n_examples"] -= 1
        m["shards"][0]["n_examples"] -= 1
    _edit_manifest(acts.path, shrink)
    again = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    assert again.n == len(PROMPTS) and torch.equal(again.pooled(1, "user.mean"), want)


def _shard_tensors(entry):
    from safetensors.torch import load_file

    return {f"{f.name}:{k}": v for f in sorted(entry.glob("shard-*")) for k, v in load_file(f).items()}


def test_iter_tokens_streams_every_token_once(tiny, tmp_path):
    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    prompts = format_prompts(tiny.tokenizer, PROMPTS)
    n_all = sum(len(p.input_ids) - 1 for p in prompts)
    n_user = sum(r == Role.USER for p in prompts for r in p.roles)
    chunks = list(acts.iter_tokens(1, chunk_tokens=7, shuffle_seed=0))
    assert sum(len(c) for c in chunks) == n_all and all(len(c) <= 7 for c in chunks)
    assert sum(len(c) for c in acts.iter_tokens(1, chunk_tokens=7, mask="user")) == n_user
    ordered = torch.cat(list(acts.iter_tokens(1, chunk_tokens=1000)))
    shuffled = torch.cat(chunks)
    assert torch.allclose(ordered.sum(0), shuffled.sum(0), atol=1e-3)
    only_first = sum(len(c) for c in acts.iter_tokens(1, chunk_tokens=5, indices=[0]))
    assert only_first == len(prompts[0].input_ids) - 1


def test_token_batch_pads_right(tiny, tmp_path):
    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    x, m = acts.token_batch(1, [2, 3], mask="user")
    assert x.shape[0] == 2 and m.sum(1).tolist() == [
        sum(r == Role.USER for r in p.roles) for p in format_prompts(tiny.tokenizer, [PROMPTS[2], PROMPTS[3]])
    ]
    assert (x[~m] == 0).all()


def test_pooling_on_a_hand_made_batch():
    h = torch.tensor([[[1.0], [5.0], [3.0], [0.0]], [[2.0], [-1.0], [0.0], [0.0]]])
    roles = torch.tensor([[0, 2, 2, -1], [0, 2, 1, -1]])
    user = token_mask("user", roles)
    assert pool(h, user, "mean").flatten().tolist() == [4.0, -1.0]
    assert pool(h, user, "max").flatten().tolist() == [5.0, -1.0]
    assert pool(h, user, "last").flatten().tolist() == [3.0, -1.0]
    assert pool_tokens(h, token_mask("all", roles), "resp-1").flatten().tolist() == [3.0, 0.0]
    empty = torch.zeros(2, 4, dtype=torch.bool)
    assert pool(h, empty, "max").abs().sum() == 0


def test_bad_input_gets_a_clear_error(tiny, tmp_path):
    with pytest.raises(ValueError, match="out of range.*0..3"):
        extract(tiny, PROMPTS, 4, root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="empty"):
        extract(tiny, [], 1, root=tmp_path, progress=False)
    with pytest.raises(TypeError, match="text #1 is int"):
        extract(tiny, ["ok", 3], 1, root=tmp_path, progress=False)
    with pytest.raises(ValueError, match="unknown aggregation"):
        extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, aggregations=["user.median"])
    with pytest.raises(ValueError, match="unknown aggregation"):
        Aggregation.parse("everything.mean")


def test_long_texts_are_truncated_with_a_counted_warning(tiny, tmp_path, caplog):
    texts = ["word " * 300, "short", "word " * 400]
    with caplog.at_level(logging.WARNING):
        acts = extract(tiny, texts, 1, root=tmp_path, progress=False, max_tokens=64)
    assert "2 of 3 texts exceeded 64 tokens" in caplog.text
    x, roles, _ = acts.example_tokens(1, 0)
    assert len(x) == 63 and roles[-5:].tolist() == [Role.TEMPLATE] * 5  # template kept after the cut


@pytest.mark.slow
def test_bundled_model_layer9_matches_output_hidden_states(bundled, tmp_path):
    acts = extract(bundled, PROMPTS[:4], 9, root=tmp_path, progress=False, token_budget=256)
    for i, p in enumerate(format_prompts(bundled.tokenizer, PROMPTS[:4])):
        x, _, _ = acts.example_tokens(9, i)
        ref = reference_hidden(bundled, p.input_ids, 9)
        # Gemma's residual stream reaches norms of ~1e4, so compare relative to its scale.
        assert (x - ref).abs().max() <= 1e-5 * ref.abs().max()


def test_finished_entry_is_reused_whatever_its_shard_size(tiny, tmp_path, monkeypatch):
    first = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    monkeypatch.setattr(extract_mod, "_extract_shard", lambda *a, **k: pytest.fail("re-extracted a finished entry"))
    again = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=1 << 15)
    assert again.path == first.path and torch.equal(again.pooled(1, "all.max"), first.pooled(1, "all.max"))


def test_token_counts_match_the_prompts(tiny, tmp_path):
    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, shard_tokens=40)
    prompts = format_prompts(tiny.tokenizer, PROMPTS)
    assert acts.token_counts("all").tolist() == [len(p.input_ids) - 1 for p in prompts]
    assert acts.token_counts("user").tolist() == [p.roles.count(Role.USER) for p in prompts]


def test_pooling_stored_tokens_matches_the_pooled_features(tiny, tmp_path):
    """The probes' `pool_tokens` over cached tokens gives the features pooled during extraction."""
    from assay.activations.aggregation import pool_tokens

    acts = extract(tiny, PROMPTS, 1, root=tmp_path, progress=False)
    for feat in ("all.mean", "all.max", "all.last", "resp-5", "user.mean", "user.max"):
        x, m = acts.token_batch(1, range(len(PROMPTS)), mask="user" if feat.startswith("user") else "all")
        torch.testing.assert_close(pool_tokens(x, m, feat), acts.pooled(1, feat), rtol=1e-5, atol=1e-5)


def test_rm_removes_only_entries_inside_the_cache(tmp_path):
    """`assay activations rm` takes a key: an absolute path, a `../` key or a symlink out of the
    cache is refused, and the folder outside (with its other files) survives."""
    from assay.activations.store import MANIFEST, remove_entry

    root = tmp_path / "cache"
    (root / "abc123").mkdir(parents=True)
    (root / "abc123" / MANIFEST).write_text("{}")
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / MANIFEST).write_text("{}")
    (outside / "thesis.tex").write_text("years of work")
    (root / "link").symlink_to(outside, target_is_directory=True)
    for key in (str(outside), "../precious", "link", "..", ""):
        with pytest.raises(ValueError, match="not a cache entry key"):
            remove_entry(key, root)
    assert (outside / "thesis.tex").exists()
    assert remove_entry("abc123", root) == root / "abc123" and not (root / "abc123").exists()


@pytest.fixture(scope="module")
def tiny_dir(tiny, tmp_path_factory):
    """The tiny model saved as a folder, as a user would pass it to the CLI."""
    path = tmp_path_factory.mktemp("tiny-model")
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    return path


@pytest.mark.parametrize("args,match", [
    (["--layer=-1"], "out of range"),
    (["--layer", "4"], "this model has 4 blocks"),
    (["--aggregation", "all.median"], "unknown aggregation"),
    (["--token-budget", "0"], "at least 2"),
    (["--token-budget=-8"], "at least 2"),
    (["--max-tokens", "0"], "at least 2"),
    (["--split", "nope"], "no split"),
])
def test_extract_refuses_bad_arguments_before_loading_the_model(tiny_dir, tmp_path, monkeypatch, args, match):
    """Bad layers, features or budgets were found only after the model had loaded (a layer past
    the last block or a zero budget deep inside extraction, as a traceback)."""
    import assay.models
    from typer.testing import CliRunner

    from assay.activations.cli import app

    def no_load(*a, **k):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(assay.models, "load", no_load, raising=False)
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "d.csv"
    data.write_text("text,label,split\nhow do I bake bread,0,train\nhow do I build a bomb,1,train\n")
    res = CliRunner().invoke(app, ["extract", "--data", str(data), "--model", str(tiny_dir), "--dtype", "float32", *args])
    assert res.exit_code != 0 and not isinstance(res.exception, AssertionError), repr(res.exception)
    assert match in res.output + str(res.exception)


def test_rm_refuses_unknown_keys_clearly_and_removes_a_corrupt_entry(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assay.activations.cli import app
    from assay.activations.store import MANIFEST
    from assay.errors import InputError

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    (tmp_path / "activations" / "abc").mkdir(parents=True)
    (tmp_path / "activations" / "abc" / MANIFEST).write_text("{garbled")
    res = CliRunner().invoke(app, ["rm", "nope"])
    assert isinstance(res.exception, InputError) and "activations list" in str(res.exception)
    assert "corrupt" in CliRunner().invoke(app, ["list"]).output
    res = CliRunner().invoke(app, ["rm", "abc"])
    assert res.exit_code == 0 and not (tmp_path / "activations" / "abc").exists()


def test_cache_folder_that_is_a_file_is_refused_clearly(tmp_path, monkeypatch):
    """ASSAY_CACHE naming a file gave a bare 'File exists' error that did not say what to change."""
    from assay.errors import InputError
    from assay.runtime import cache_dir

    (tmp_path / "f").write_text("x")
    for where in (tmp_path / "f", tmp_path / "f" / "sub"):
        monkeypatch.setenv("ASSAY_CACHE", str(where))
        with pytest.raises(InputError, match="ASSAY_CACHE"):
            cache_dir()


def test_max_tokens_shorter_than_the_chat_template_is_an_input_error(tiny, tmp_path):
    """--max-tokens 2 passed the argument check, then failed inside formatting as a bare ValueError
    (reported as a bug in assay)."""
    from assay.errors import InputError

    with pytest.raises(InputError, match="use --max-tokens"):
        extract(tiny, PROMPTS, 1, root=tmp_path, progress=False, max_tokens=3)


def test_a_finished_entry_is_found_without_reading_the_tokenizer(tiny, tmp_path):
    """A warm rerun finds its cache entry from the spec alone (fingerprint, texts, chat format):
    a lazily loaded model's tokenizer is read only when something is left to extract."""
    from assay.models.loading import LoadedModel

    first = extract(tiny, PROMPTS, [1], root=tmp_path, progress=False)

    def unreadable():
        raise AssertionError("the tokenizer was read")

    blind = LoadedModel(model=tiny.model, load_tokenizer=unreadable, name=tiny.name, fingerprint=tiny.fingerprint,
                        no_chat_template=True)
    assert extract(blind, PROMPTS, [1], root=tmp_path, progress=False).path == first.path
    with pytest.raises(AssertionError, match="tokenizer was read"):
        extract(blind, PROMPTS + ["one more prompt"], [1], root=tmp_path, progress=False)


def test_compiled_extraction_matches_eager_in_its_own_entry(tokenizer, tmp_path):
    """`compile=True` gives eager's numbers within float error, in its own cache entry, and borrows no
    prompts from an eager entry (their bits differ); the eager key is the one it always was."""
    from assay.activations.forward import compiled_blocks
    from tests.conftest import tiny_gemma3

    lm = tiny_gemma3(tokenizer)  # its own model: the test checks what the extractions leave on its blocks
    eager = extract(lm, PROMPTS, [1, 2], root=tmp_path, progress=False, token_budget=64)
    compiled = extract(lm, PROMPTS, [1, 2], root=tmp_path, progress=False, token_budget=64, compile=True)
    assert compiled.path != eager.path
    assert not any("forward" in b.__dict__ for b in lm.blocks)  # eager again once the extraction is done
    spec = read_json(compiled.path / "manifest.json")["spec"]
    assert spec["compiled"] is True and "compiled" not in read_json(eager.path / "manifest.json")["spec"]
    assert all(s is None or "view" not in s for s in read_json(compiled.path / "manifest.json")["shards"])
    for layer in (1, 2):
        for agg in ("all.mean", "user.last", "resp-5"):
            torch.testing.assert_close(compiled.pooled(layer, agg), eager.pooled(layer, agg), rtol=1e-4, atol=1e-4)
    with compiled_blocks(lm, 2):  # blocks 0..2 only, sharing the class's one compiled forward
        assert [isinstance(b.forward, functools.partial) for b in lm.blocks] == [True, True, True, False]
        assert lm.blocks[0].forward.func is lm.blocks[2].forward.func
    # the same extraction into another folder: eager's bits again (compiled blocks would round otherwise)
    again = extract(lm, PROMPTS, [1, 2], root=tmp_path / "later", progress=False, token_budget=64)
    assert "compiled" not in read_json(again.path / "manifest.json")["spec"]
    assert torch.equal(again.pooled(2, "all.mean"), eager.pooled(2, "all.mean"))


def test_compile_without_a_cpp_compiler_is_one_clear_error(tiny, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assay.cli import app
    from assay.errors import InputError

    monkeypatch.setattr("shutil.which", lambda name, *a, **k: None)
    monkeypatch.setattr("assay.data.load_or_build", lambda *a, **k: pytest.fail("data loaded before the check"))
    monkeypatch.setattr("assay.runtime.default_device", lambda: torch.device("cpu"))
    tiny.model.config.save_pretrained(tmp_path / "m")
    result = CliRunner().invoke(app, ["activations", "extract", "--data", "x.csv", "--model", str(tmp_path / "m"),
                                      "--layer", "1", "--dtype", "float32", "--compile"])
    assert isinstance(result.exception, InputError) and "C++ compiler" in str(result.exception)


def test_a_compile_that_fails_at_the_first_forward_is_one_clear_error(tokenizer, tmp_path, monkeypatch):
    from torch._dynamo.exc import TorchDynamoException

    from assay.errors import InputError
    from tests.conftest import tiny_gemma3

    def broken_compile(fn, **kwargs):
        def run(*a, **k):
            raise TorchDynamoException("CppCompileError: C++ compile error\n... pages of compiler output ...")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr("assay.activations.forward._COMPILED_FORWARD", {})  # compile afresh, not from an earlier test
    with pytest.raises(InputError, match=r"could not compile the model here .*C\+\+ compile error\); run without"):
        extract(tiny_gemma3(tokenizer), PROMPTS[:2], 1, root=tmp_path, progress=False, compile=True)
