"""Model loading (bundled, local dir, errors) and chat formatting with per-token roles."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest

from assay.models import ModelLoadError, Role, format_prompts, load
from assay.models.chat import GEMMA_PREFIX, GEMMA_SUFFIX, chat_affixes
from tests.conftest import tiny_gemma3


def test_unknown_model_or_path_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="model path not found"):
        load(str(tmp_path / "nope"))
    with pytest.raises(ModelLoadError, match="GGUF file not found"):
        load(str(tmp_path / "missing.gguf"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelLoadError, match="no config.json"):
        load(str(tmp_path / "empty"))


def test_local_directory_loads_like_an_hf_id(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    lm = load(str(tmp_path / "m"), device="cpu")
    assert lm.n_layers == 4 and lm.d_model == 64
    assert lm.fingerprint["weights_sha256"] and lm.fingerprint["tokenizer"]
    with pytest.raises(ValueError, match="out of range"):
        lm.block(4)


def test_lazy_load_reads_weights_and_tokenizer_only_when_used(tiny, tmp_path):
    """A lazy load's fingerprint, layers, width and chat format are the eager load's, before any
    weights or tokenizer are read; a chat template it cannot read from the files makes it load the
    tokenizer at once (the fingerprint needs it), and still the same fingerprint."""
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    eager = load(str(tmp_path / "m"), device="cpu")
    lazy = load(str(tmp_path / "m"), device="cpu", lazy=True)
    assert not lazy.loaded and lazy._tokenizer is None
    assert lazy.fingerprint == eager.fingerprint
    assert (lazy.n_layers, lazy.d_model, lazy.max_positions) == (eager.n_layers, eager.d_model, eager.max_positions)
    assert (lazy.device, lazy.dtype) == (eager.device, eager.dtype)
    assert lazy.chat_affixes() == eager.chat_affixes() == (GEMMA_PREFIX, GEMMA_SUFFIX)
    assert not lazy.loaded and lazy._tokenizer is None
    ids = lazy.tokenizer("a lazy tokenizer")["input_ids"]
    assert ids == eager.tokenizer("a lazy tokenizer")["input_ids"] and not lazy.loaded
    assert lazy.block(2) is lazy.model.model.layers[2] and lazy.loaded
    for a, b in zip(lazy.model.state_dict().values(), eager.model.state_dict().values()):
        assert a.equal(b)

    (tmp_path / "m" / "chat_template.jinja").write_text("{% for m in messages %}[{{ m['content'] }}]{% endfor %}")
    eager, lazy = load(str(tmp_path / "m"), device="cpu"), load(str(tmp_path / "m"), device="cpu", lazy=True)
    assert lazy._tokenizer is not None and not lazy.loaded
    assert lazy.fingerprint == eager.fingerprint and lazy.chat_affixes() == eager.chat_affixes() == ("[", "]")


def test_lazy_load_reads_config_json_as_plain_json_until_the_config_is_needed(tiny, tmp_path):
    """A cached rerun answers layers, width and context from config.json without building
    transformers' config (seconds of imports); the config is built when asked for, and a file that
    leaves a field to the class's default goes to transformers at once, with the same answers; a
    config.json that disagrees with the weights is caught when they load."""
    import json

    from assay.models.loading import config_file_fields
    from assay.models.peek import n_layers

    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    eager = load(str(tmp_path / "m"), device="cpu")
    answers = (eager.n_layers, eager.d_model, eager.max_positions)
    assert config_file_fields(tmp_path / "m") == dict(zip(("n_layers", "d_model", "max_positions"), answers))
    lazy = load(str(tmp_path / "m"), device="cpu", lazy=True)
    built = lambda m: m._load_config.cache_info().currsize == 1  # noqa: E731  (transformers' config, memoised)
    assert not built(lazy) and (lazy.n_layers, lazy.d_model, lazy.max_positions) == answers
    assert lazy.fingerprint == eager.fingerprint and n_layers(str(tmp_path / "m")) == eager.n_layers
    assert lazy.config.get_text_config().num_hidden_layers == eager.n_layers and not lazy.loaded

    raw = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({k: v for k, v in raw.items()
                                                            if k != "max_position_embeddings"}))
    assert config_file_fields(tmp_path / "m") is None
    lazy = load(str(tmp_path / "m"), device="cpu", lazy=True)
    assert built(lazy) and lazy.max_positions == 131_072  # Gemma3TextConfig's default
    assert (lazy.n_layers, lazy.d_model) == answers[:2] and n_layers(str(tmp_path / "m")) == eager.n_layers

    (tmp_path / "m" / "config.json").write_text(json.dumps({**raw, "num_hidden_layers": 6, "layer_types": None}))
    lazy = load(str(tmp_path / "m"), device="cpu", lazy=True)
    assert lazy.n_layers == 6 and not built(lazy)
    with pytest.raises(ModelLoadError):
        lazy.model


def test_lazy_load_of_a_broken_checkpoint_fails_when_first_used(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path / "m")
    tiny.tokenizer.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not safetensors")
    lazy = load(str(tmp_path / "m"), device="cpu", lazy=True)
    with pytest.raises(ModelLoadError, match="could not load model"):
        lazy.model


def test_gemma_turn_format_when_tokenizer_has_no_template(tokenizer):
    assert not tokenizer.chat_template  # the bundled GGUF ships none
    assert chat_affixes(tokenizer) == (GEMMA_PREFIX, GEMMA_SUFFIX)
    p = format_prompts(tokenizer, ["Is this safe?"])[0]
    toks = tokenizer.convert_ids_to_tokens(p.input_ids)
    assert toks[:4] == ["<bos>", "<start_of_turn>", "user", "\n"]
    assert toks[-5:] == ["<end_of_turn>", "\n", "<start_of_turn>", "model", "\n"]
    assert tokenizer.decode([t for t, r in zip(p.input_ids, p.roles) if r == Role.USER]) == "Is this safe?"
    assert p.roles[0] == Role.SPECIAL and p.response_start == len(p.input_ids)


def test_tokenizer_chat_template_is_used_when_present(tokenizer):
    tok = copy.deepcopy(tokenizer)
    tok.chat_template = ("{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]: {{ m['content'] }}\n{% endfor %}"
                         "{% if add_generation_prompt %}[assistant]:{% endif %}")
    prefix, suffix = chat_affixes(tok)
    assert prefix == "<bos>[user]: " and suffix == "\n[assistant]:"
    p = format_prompts(tok, ["hello there"])[0]
    assert p.roles.count(Role.SPECIAL) == 1 and p.input_ids[0] == tok.bos_token_id
    assert tok.decode([t for t, r in zip(p.input_ids, p.roles) if r == Role.USER]) == "hello there"


def test_plain_documents_have_bos_then_content(tokenizer):
    p = format_prompts(tokenizer, ["The river runs."], chat=False)[0]
    assert p.roles[0] == Role.SPECIAL and set(p.roles[1:]) == {Role.USER}


@pytest.mark.slow
def test_bundled_model_loads_from_its_safetensors_copy(bundled):
    assert bundled.n_layers == 18 and bundled.d_model == 640
    assert bundled.fingerprint["weights_sha256"].startswith("a5fd3b62")


def _middle_edit(path):
    """Change 4 bytes in the middle of a file, keeping its size and its first and last MiB."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + 4] = bytes(b ^ 0xFF for b in data[mid:mid + 4])
    path.write_bytes(bytes(data))


def test_weights_digest_covers_the_whole_file_and_is_cached(tmp_path, monkeypatch):
    """The old key hashed names, sizes and the first and last MiB: a changed middle layer reused
    stale activations. Every byte counts now, and an unchanged file is not read twice."""
    import os

    import assay.models.fingerprints as fingerprints

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "model.safetensors").write_bytes(os.urandom(5 << 20))
    first = fingerprints._weights_digest(d)
    reads = []
    monkeypatch.setattr(fingerprints, "sha256_file", lambda p: reads.append(p) or "x")
    assert fingerprints._weights_digest(d) == first and reads == []  # served from the digest cache
    monkeypatch.undo()
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    _middle_edit(d / "model.safetensors")
    assert fingerprints._weights_digest(d) != first
    (tmp_path / "cache" / "file-digests.json").write_text("{garbage")  # a corrupt digest cache is ignored
    assert fingerprints._weights_digest(d) != first


class _FakeTokenizer:
    def save_pretrained(self, path):
        Path(path).mkdir(parents=True, exist_ok=True)
        (Path(path) / "tokenizer.json").write_text("{}")


def test_damaged_dequantised_copy_is_found_and_converted_again(tiny, tmp_path, monkeypatch):
    """The dequantised copy of a GGUF was never checked: damaged weights gave wrong activations
    under the usual key. Now its files are checked against the sha256 recorded at conversion, a
    damaged copy is converted again, and the key follows the verified files."""
    from assay.models import dequantise, resolve

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    gguf, sha = tmp_path / "x.gguf", "ab" * 32
    converted = []

    def convert(*a, **k):  # stands in for transformers' dequantisation of the GGUF
        converted.append(1)
        return copy.deepcopy(tiny.model)

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", convert)
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: _FakeTokenizer())
    out, fp = resolve._from_gguf("x", gguf, sha)
    assert len(converted) == 1 and dequantise.verify_saved(Path(out)) == []
    assert resolve._from_gguf("x", gguf, sha) == (out, fp) and len(converted) == 1  # intact: reused
    _middle_edit(Path(out) / "model.safetensors")
    assert dequantise.verify_saved(Path(out)) == ["model.safetensors"]
    assert resolve._from_gguf("x", gguf, sha) == (out, fp) and len(converted) == 2  # rebuilt, same content
    assert dequantise.verify_saved(Path(out)) == []
    # a copy whose verified files differ (another converter, a repaired bad one) gets another key
    (Path(out) / "model.safetensors").unlink()
    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained",
                        lambda *a, **k: converted.append(1) or tiny_gemma3(tiny.tokenizer, seed=1).model)
    out2, fp2 = resolve._from_gguf("x", gguf, sha)
    assert len(converted) == 3 and out2 == out and fp2["weights_sha256"] == sha
    assert fp2["dequantised_sha256"] != fp["dequantised_sha256"]


def test_a_conversion_finished_by_another_process_meanwhile_is_kept(tiny, tmp_path, monkeypatch):
    """Two torchrun ranks on an empty cache both convert the GGUF. The one that finishes second keeps
    the first one's copy instead of deleting it while the first reads it (a CI run caught a rank
    reading `assay-complete.json` from the folder the other had just removed)."""
    import assay.models.dequantise as dequantise

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    gguf, sha = tmp_path / "x.gguf", "ab" * 32
    monkeypatch.setattr("transformers.AutoTokenizer.from_pretrained", lambda *a, **k: _FakeTokenizer())
    first = {}

    def convert(*a, **k):  # while this process converts, another one finishes the same conversion
        if not first:
            first["started"] = True
            first["out"] = dequantise._dequantised(gguf, sha)
            first["inode"] = (first["out"] / "assay-complete.json").stat().st_ino
        return copy.deepcopy(tiny.model)

    monkeypatch.setattr("transformers.AutoModelForCausalLM.from_pretrained", convert)
    out = dequantise._dequantised(gguf, sha)
    assert out == first["out"] and (out / "assay-complete.json").stat().st_ino == first["inode"]
    assert dequantise.verify_saved(out) == [] and not list(out.parent.glob("*.tmp*"))


def test_copy_from_before_checksums_is_converted_again(tmp_path):
    import assay.models.dequantise as dequantise
    from assay.fileio import write_json

    write_json(tmp_path / "assay-complete.json", {"gguf": "x.gguf", "gguf_sha256": "ab" * 32})
    assert dequantise.verify_saved(tmp_path) != []
    (tmp_path / "assay-complete.json").write_text("{torn")
    assert dequantise.verify_saved(tmp_path) != []


def test_unreachable_hub_id_fails_fast(monkeypatch):
    import time

    import assay.models.resolve as resolve

    monkeypatch.setattr(resolve, "_hub_reachable", lambda timeout=3.0: False)
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="not in the local Hugging Face cache and the Hub cannot be reached"):
        load("some-org/some-model-that-is-not-cached")
    assert time.perf_counter() - t0 < 5


def test_broken_checkpoints_are_clear_errors(tiny, tmp_path):
    """Garbled config, missing weights, truncated weights: one ModelLoadError naming the model."""
    good = tmp_path / "good"
    tiny.model.save_pretrained(good)
    tiny.tokenizer.save_pretrained(good)
    import shutil

    for name, damage in {
        "bad-config": lambda d: (d / "config.json").write_text("{not json"),
        "no-weights": lambda d: (d / "model.safetensors").unlink(),
        "truncated": lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:1000]),
        "unknown-arch": lambda d: (d / "config.json").write_text('{"model_type": "frobnicator"}'),
    }.items():
        d = tmp_path / name
        shutil.copytree(good, d)
        damage(d)
        with pytest.raises(ModelLoadError, match="could not load model"):
            load(str(d), device="cpu")


def test_model_errors_are_user_errors():
    from assay.errors import AssayError, InputError
    from assay.models.loading import check_layer

    assert issubclass(ModelLoadError, AssayError) and issubclass(ModelLoadError, ValueError)
    with pytest.raises(InputError, match="out of range"):
        check_layer(4, 4)


def test_more_bad_model_inputs_are_clear_errors(tiny, tmp_path, monkeypatch):
    """Each of these used to escape as a raw transformers/torch exception or load silently wrong."""
    import shutil

    from safetensors.torch import load_file, save_file

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    good = tmp_path / "good"
    tiny.model.save_pretrained(good)
    tiny.tokenizer.save_pretrained(good)

    def drop_tensor(d):  # transformers would fill the missing tensor with random numbers
        t = load_file(d / "model.safetensors")
        del t["model.layers.2.mlp.down_proj.weight"]
        save_file(t, d / "model.safetensors", metadata={"format": "pt"})

    def pickle_garbage(d):
        (d / "model.safetensors").unlink()
        (d / "pytorch_model.bin").write_bytes(b"not a pickle" * 10)

    def no_tokenizer(d):
        for f in d.iterdir():
            if f.name.startswith(("tokenizer", "special")):
                f.unlink()

    for name, damage, match in [
        ("missing-tensor", drop_tensor, "1 weights are missing"),
        ("pickle-garbage", pickle_garbage, "not a readable PyTorch checkpoint"),
        ("shape-mismatch", lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"hidden_size": 64', '"hidden_size": 96')),
         "do not match config.json"),
        ("no-tokenizer", no_tokenizer, "tokenizer"),
        ("contradictory-config", lambda d: (d / "config.json").write_text(
            (d / "config.json").read_text().replace('"num_hidden_layers": 4', '"num_hidden_layers": 2')),
         "could not load model"),
    ]:
        d = tmp_path / name
        shutil.copytree(good, d)
        damage(d)
        with pytest.raises(ModelLoadError, match=match):
            load(str(d), device="cpu")
    (tmp_path / "magic.gguf").write_bytes(b"GGUF" + b"\x00" * 64)
    (tmp_path / "dir.gguf").mkdir()
    for name, match in [("   ", "no model named"), ("bad id!!", "nor a valid Hugging Face model id"),
                        (str(tmp_path / "dir.gguf"), "is a directory"),
                        (str(tmp_path / "magic.gguf"), "could not convert GGUF file")]:
        with pytest.raises(ModelLoadError, match=match):
            load(name, device="cpu")


def test_damaged_bundled_package_is_a_clear_error(monkeypatch, tmp_path):
    import sys
    import types

    import assay.models.bundled as bundled

    def assemble(target, overwrite=False):
        raise ValueError("Assembled file sha256 did not match expected value")

    fake = types.SimpleNamespace(MODEL_NAME="m.gguf", EXPECTED_SHA256="0" * 64, assemble=assemble)
    monkeypatch.setitem(sys.modules, "fake_bundled_pkg", fake)
    monkeypatch.setitem(bundled._BUNDLED, "fake-model", "fake_bundled_pkg")
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    with pytest.raises(ModelLoadError, match="force-reinstall fake-bundled-pkg"):
        load("fake-model")


def test_bundled_gguf_is_checked_without_rereading_it_and_reassembled_when_damaged(monkeypatch, tmp_path):
    """A cached rerun takes the assembled GGUF on its remembered digest (no 250 MB reread by the
    package's assemble()); a copy whose content changed is assembled again from the chunks."""
    import hashlib
    import sys
    import types

    import assay.models.bundled as bundled

    content, calls = b"GGUF and some weights", []

    def assemble(target, overwrite=False):
        calls.append(target)
        Path(target).write_bytes(content)
        return Path(target)

    fake = types.SimpleNamespace(MODEL_NAME="m.gguf", EXPECTED_SHA256=hashlib.sha256(content).hexdigest(),
                                 assemble=assemble, verify_chunks=lambda: None)
    monkeypatch.setitem(sys.modules, "fake_bundled_pkg", fake)
    monkeypatch.setitem(bundled._BUNDLED, "fake-model", "fake_bundled_pkg")
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    path, sha = bundled._bundled_gguf("fake-model")
    assert path.read_bytes() == content and sha == fake.EXPECTED_SHA256 and len(calls) == 1
    assert bundled._bundled_gguf("fake-model") == (path, sha) and len(calls) == 1
    path.write_bytes(b"GGUF and other weights")
    assert bundled._bundled_gguf("fake-model") == (path, sha) and len(calls) == 2
    assert path.read_bytes() == content


def test_hub_check_is_offline_aware(monkeypatch):
    import socket

    import assay.models.resolve as resolve

    def no_network(*a, **k):
        raise AssertionError("must not touch the network")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve._hub_reachable() is False
    # a cached id with no Hub loads from the cache alone instead of retrying the network
    monkeypatch.setattr(resolve, "_hub_cached", lambda name, revision: True)
    assert resolve._resolve("some-org/cached-model", None)[1]["_offline"] is True


def test_layer_peek_leaves_a_contradictory_config_to_load(tmp_path):
    """peek read the config with a narrower net than load; its strict-validation error escaped raw."""
    import json

    from assay.models.peek import n_layers

    (tmp_path / "config.json").write_text(json.dumps({
        "model_type": "gemma3_text", "num_hidden_layers": 2, "layer_types": ["full_attention"] * 4}))
    assert n_layers(str(tmp_path)) is None
    with pytest.raises(ModelLoadError, match="could not load model"):
        load(str(tmp_path), device="cpu")


def test_a_device_map_load_extracts_what_a_plain_load_does(tiny, tmp_path):
    """`load(device_map="auto")` gives the same activations, and the forward still stops at the deepest
    layer. (With no GPU every layer lands on the CPU; with one, on it, and the batch given on the
    CPU is run there and comes back. The spread over several GPUs is accelerate's.)"""
    import torch

    from assay.activations.forward import residual_stream
    from assay.errors import InputError
    from assay.models import load

    path = tmp_path / "m"
    tiny.model.save_pretrained(path)
    tiny.tokenizer.save_pretrained(path)
    plain = load(str(path), dtype="float32", device="cpu")
    mapped = load(str(path), dtype="float32", device_map="auto")
    batch = plain.tokenizer(["a test prompt", "another one here"], return_tensors="pt", padding=True)
    calls = []
    mapped.block(3).register_forward_hook(lambda *a: calls.append(1))
    a = residual_stream(plain, batch["input_ids"], batch["attention_mask"], [1, 2])
    b = residual_stream(mapped, batch["input_ids"], batch["attention_mask"], [1, 2])
    assert not calls  # block 3 never ran
    for k in (1, 2):
        assert b[k].device == batch["input_ids"].device  # back on the batch's device, wherever it ran
        if mapped.device.type == "cpu":
            assert torch.equal(a[k], b[k])
        else:  # on a GPU machine "auto" puts the layers there: other kernels, the same numbers within fp32 error
            torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-4)
    with pytest.raises(InputError, match="device or a device_map"):
        load(str(path), device="cpu", device_map="auto")


def test_device_map_option_is_checked_before_loading(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from assay.cli import app

    monkeypatch.setattr("assay.models.load", lambda *a, **k: pytest.fail("loaded the model before checking"))
    data = tmp_path / "d.csv"
    data.write_text("text,label\na,1\nb,0\n")
    base = ["activations", "extract", "--data", str(data), "--layer", "1"]
    env = {"COLUMNS": "400", "NO_COLOR": "1"}
    bad = CliRunner().invoke(app, [*base, "--device-map", "everywhere"], env=env)
    assert bad.exit_code == 2 and "choose one of auto" in bad.output
    monkeypatch.setenv("WORLD_SIZE", "2")
    both = CliRunner().invoke(app, [*base, "--device-map", "auto"], env=env)
    assert both.exit_code == 2 and "each rank has its own GPU" in both.output


def test_processes_that_assemble_the_bundled_model_at_once_all_get_it_whole(monkeypatch, tmp_path):
    """torchrun's ranks start on an empty cache together: each assembles the GGUF beside the target
    and renames it on, so none reads, checks or truncates another's half-written file."""
    from concurrent.futures import ThreadPoolExecutor

    from assay.fileio import sha256_file
    from assay.models.bundled import DEFAULT_MODEL, _bundled_gguf

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    with ThreadPoolExecutor(3) as pool:
        got = list(pool.map(lambda _: _bundled_gguf(DEFAULT_MODEL), range(3)))
    (path, sha), = set(got)
    assert sha256_file(path) == sha and [p.name for p in path.parent.iterdir()] == [path.name]


def _tiny_gguf(path):
    import gguf
    import numpy as np

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_string("general.name", "tiny")
    w.add_array("tokenizer.ggml.tokens", ["<pad>", "hello", "▁wörld", "日本", ""])
    w.add_array("tokenizer.ggml.scores", [0.0, -1.5, -2.25, -3.0, 0.5])
    w.add_uint32("llama.block_count", 2)
    w.add_tensor("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_a_gguf_conversion_parses_the_file_once_and_reads_what_the_real_reader_reads(tmp_path):
    """transformers opens the GGUF for the config, the weights and the tokenizer; inside the
    conversion all three get the one reader (its metadata parsed once), its slices are plain ndarray
    views (no memmap subclass: that is what made it slow), every field and tensor reads as through
    the real reader and transformers' own parser, and the real class and parser are back after."""
    import gguf
    import numpy as np
    import transformers.modeling_gguf_pytorch_utils as hf_gguf

    from assay.models.gguf_reading import fast_gguf_reading

    path = tmp_path / "t.gguf"
    _tiny_gguf(path)
    real, real_parse = gguf.GGUFReader, hf_gguf._gguf_parse_value

    def values(reader):
        return {k: [hf_gguf._gguf_parse_value(f.parts[i], f.types) for i in f.data] for k, f in reader.fields.items()}

    want_fields, want_tensor = values(real(path)), np.array(real(path).tensors[0].data)
    with fast_gguf_reading():
        a, b = gguf.GGUFReader(path), gguf.GGUFReader(str(path))
        assert a is b
        got_fields = values(a)
        tensor = a.tensors[0].data
        assert type(tensor) is np.ndarray and not tensor.flags.writeable
        assert all(type(p) is np.ndarray for f in a.fields.values() for p in f.parts)
    assert got_fields == want_fields and got_fields["tokenizer.ggml.tokens"][2] == "▁wörld"
    assert np.array_equal(tensor, want_tensor)
    assert gguf.GGUFReader is real and hf_gguf._gguf_parse_value is real_parse and gguf.GGUFReader(path) is not a


@pytest.mark.parametrize("fails", [False, True])
def test_the_study_converts_the_model_in_another_process_while_its_data_builds(tmp_path, monkeypatch, tiny, fails):
    """A cold study converts the bundled GGUF in a child process while the benchmark builds. `load`
    starts only once that conversion has ended (never a second one beside it); a data error stops
    the conversion instead of waiting a minute for it, and the error comes out."""
    import os
    import time

    from assay.errors import InputError
    from assay.experiment import StudyConfig
    from assay.experiment.study import Study
    from assay.models import background
    from conftest import toy_benchmark

    events = tmp_path / "events.txt"
    monkeypatch.setenv("EVENTS", str(events))
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))  # the bundled model not converted yet
    # the child as the real one is started, doing a slow stand-in for the conversion
    monkeypatch.setattr(background.BackgroundConversion, "_CHILD",
                        "import os, sys, time\n"
                        "log = lambda s: open(os.environ['EVENTS'], 'a').write(s + '\\n')\n"
                        "log(f'convert {sys.argv[1]} {os.getpid()}')\n"
                        "try:\n"
                        "    time.sleep(5)\n"
                        "    log('converted')\n"
                        "except KeyboardInterrupt:\n"
                        "    log('cancelled')\n"
                        "    raise\n")

    def data(*a, **k):
        events.open("a").write("data\n")
        if fails:
            deadline = time.monotonic() + 30
            while "convert " not in events.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)  # the child is converting when the data fails
            raise InputError("a broken dataset")
        return real_data(*a, **k)

    def load(*a, **k):
        events.open("a").write("load\n")
        return tiny

    import assay.data

    real_data = assay.data.load_or_build
    monkeypatch.setattr("assay.data.load_or_build", data)
    monkeypatch.setattr("assay.models.load", load)
    assert background.convert_in_background(str(tmp_path)) is None  # a model directory: nothing to convert
    cfg = StudyConfig(model="gemma-3-270m", data=str(toy_benchmark(tmp_path)), layer=1, layer_sweep=False)
    study = Study(cfg, tmp_path / "out", progress=False)
    started = time.monotonic()
    if fails:
        with pytest.raises(InputError, match="broken"):
            study.prepare()
        assert time.monotonic() - started < 4  # not held back until the conversion would have ended (5 s)
    else:
        study.prepare()
    lines = events.read_text().splitlines()
    convert = next(ln for ln in lines if ln.startswith("convert "))
    assert convert.split()[1] == "gemma-3-270m" and int(convert.split()[2]) != os.getpid()
    assert lines[-1] == "cancelled" if fails else lines[-2:] == ["converted", "load"]


def test_an_interrupted_conversion_leaves_no_partial_copy(tmp_path, monkeypatch):
    """What a cancelled background conversion does in its process: the half-written copy goes."""
    from assay.models import dequantise

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))

    def interrupted(gguf, sha, tmp):
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(dequantise, "_convert_gguf", interrupted)
    with pytest.raises(KeyboardInterrupt):
        dequantise._dequantised(tmp_path / "m.gguf", "ab" * 32)
    assert list((tmp_path / "cache" / "models").iterdir()) == []


def test_a_copy_left_by_a_killed_conversion_is_removed_and_one_being_written_is_kept(tmp_path, monkeypatch):
    """SIGKILL (or the OOM killer) gives a conversion no chance to clean up: its half-written copy,
    up to 1 GB, stayed in the cache for good. The next conversion removes it; a copy another live
    process is writing stays, and so does one too new to have taken its lock yet."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from assay.models import dequantise

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cache"))
    out = dequantise._dequantised_dir("ab" * 32)
    writer = ("import sys, time; from pathlib import Path; from assay.models.dequantise import _held\n"
              "with _held(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(120)")
    writers = {}
    try:
        for name in ("killed", "alive"):
            tmp = out.with_name(f"{out.name}.tmp-{name}")
            writers[name] = subprocess.Popen([sys.executable, "-c", writer, str(tmp)], stdout=subprocess.PIPE, text=True)
            assert writers[name].stdout.readline() == "held\n"
            (tmp / "model.safetensors").write_bytes(b"half")
            os.utime(tmp, (time.time() - 60,) * 2)
        writers["killed"].send_signal(signal.SIGKILL)
        writers["killed"].wait()
        out.with_name(f"{out.name}.tmp-new").mkdir()  # as if between another writer's mkdir and its lock
        monkeypatch.setattr(dequantise, "_convert_gguf", lambda gguf, sha, tmp: (tmp / "model.safetensors").write_bytes(b"x"))
        assert dequantise._dequantised(tmp_path / "m.gguf", "ab" * 32) == out
        assert sorted(p.name for p in out.parent.iterdir()) == [out.name, f"{out.name}.tmp-alive", f"{out.name}.tmp-new"]
    finally:
        for w in writers.values():
            w.kill()
            w.wait()


def test_a_failed_background_conversion_says_why_and_load_meets_the_error_itself(tmp_path, caplog):
    """The child really converts (here: a file with GGUF's magic bytes and nothing else); when it
    fails, `wait()` is False and warns with the child's own error, and `load` raises it clearly."""
    import logging

    from assay.models import background

    bad = tmp_path / "magic.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 64)
    conversion = background.convert_in_background(str(bad))
    with caplog.at_level(logging.WARNING, logger="assay.models.background"):
        assert conversion.wait() is False and conversion.wait() is False
    assert "background process failed" in caplog.text and "could not convert GGUF file" in caplog.text
    with pytest.raises(ModelLoadError, match="could not convert GGUF file"):
        load(str(bad))


def test_only_a_model_not_yet_converted_gets_a_background_conversion(bundled_dir, tmp_path, monkeypatch):
    """A warm cache starts no child (a cached rerun would pay its imports); a cold cache, a new GGUF
    file or a damaged copy does; a model directory, a missing file and a hub id never do."""
    from assay.fileio import write_json
    from assay.models import background, fingerprints
    from assay.models.loading import DEFAULT_MODEL

    assert background.convert_in_background(DEFAULT_MODEL) is None  # `bundled_dir` converted it
    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path / "cold"))
    assert background._needs_conversion(DEFAULT_MODEL)
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"GGUF" + b"\x00" * 64)
    assert background._needs_conversion(str(gguf))
    out = tmp_path / "cold" / "models" / fingerprints.file_digest(gguf)[:16]
    out.mkdir(parents=True)
    (out / "config.json").write_text("{}")
    write_json(out / "assay-complete.json", {"files_sha256": {"config.json": fingerprints.file_digest(out / "config.json")}})
    assert not background._needs_conversion(str(gguf))
    (out / "config.json").write_text('{"damaged": 1}')
    assert background._needs_conversion(str(gguf))
    for name in (bundled_dir, str(tmp_path / "missing.gguf"), "google/gemma-3-270m"):
        assert not background._needs_conversion(name)
