"""Model loading (bundled, local dir, errors) and chat formatting with per-token roles."""

from __future__ import annotations

import copy

import pytest

from assay.models import ModelLoadError, Role, format_prompts, load
from assay.models.chat import GEMMA_PREFIX, GEMMA_SUFFIX, chat_affixes


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
