"""SAE corpora leave out the benchmark's prompts (`exclude`), keeping the rest in their order."""

from __future__ import annotations

import pytest

from assay.data import build_benchmark, sources
from assay.data.benchmark_requests import sharegpt_requests
from assay.data.normalize import normalize_text
from assay.sae.corpus import render_conversation, training_texts

# ~4,000 of the ~17,600 conversations (each counted at most 256 tokens): enough that, without the
# exclusion, some benchmark prompts' conversations are drawn.
N_TOKENS, MAX_TOKENS = 1_000_000, 256


@pytest.fixture(scope="module")
def exclude(tmp_path_factory) -> frozenset[str]:
    ds = build_benchmark("quick", seed=0, out_dir=tmp_path_factory.mktemp("quick-s0"))
    return sharegpt_requests(ds)


def _user_turns_of(tokenizer) -> dict[str, list[str]]:
    """Rendered chat text -> its user turns, normalised and lower-cased."""
    return {render_conversation(tokenizer, c): [normalize_text(t["content"]).lower() for t in c
                                                 if t["role"] == "user" and len(t["content"]) < 5000]
            for c in sources.sharegpt_conversations()}


@pytest.mark.slow  # builds the quick benchmark and reads all of ShareGPT
def test_chat_corpus_excludes_benchmark_sharegpt_requests(tokenizer, exclude):
    assert len(exclude) > 100
    keys = {t.lower() for t in exclude}
    turns = _user_turns_of(tokenizer)
    plain = training_texts("chat", tokenizer, N_TOKENS, MAX_TOKENS)
    kept = training_texts("chat", tokenizer, N_TOKENS, MAX_TOKENS, exclude=exclude)
    hits = [t for t in plain if any(u in keys for u in turns[t])]
    assert hits, "no benchmark prompt in the corpus even without exclusion: raise N_TOKENS"
    assert not [t for t in kept if any(u in keys for u in turns[t])]
    # the exclusion removes texts, it does not reshuffle the rest
    removed = set(hits)
    assert [t for t in plain if t not in removed] == kept[: len(plain) - len(removed)]


def test_chat_user_corpus_excludes_benchmark_requests(tokenizer, exclude):
    keys = {t.lower() for t in exclude}
    kept = training_texts("chat-user", tokenizer, N_TOKENS // 4, MAX_TOKENS, exclude=exclude)
    assert kept and not [t for t in kept if normalize_text(t).lower() in keys]
    assert training_texts("wiki", tokenizer, 20_000, exclude=exclude) == training_texts("wiki", tokenizer, 20_000)


def test_texts_chosen_for_a_model_are_kept_and_read_back_without_its_tokenizer(tokenizer, tmp_path, monkeypatch):
    """Passed the model, a choice of texts is kept under its tokenizer's hash: the same choice again
    is read back without reading the tokenizer; another choice or another tokenizer chooses anew."""
    from assay.models.loading import LoadedModel
    from assay.sae.corpus import held_out_texts

    monkeypatch.setenv("ASSAY_CACHE", str(tmp_path))
    reads: list[str] = []

    def lazy(tokenizer_hash: str) -> LoadedModel:
        def read_tokenizer():
            reads.append(tokenizer_hash)
            return tokenizer

        def no_weights():
            raise AssertionError("choosing texts needs no weights")

        return LoadedModel(load_model=no_weights, load_tokenizer=read_tokenizer, name="m",
                           fingerprint={"tokenizer": tokenizer_hash})

    want = training_texts("wiki", tokenizer, 3000, 128, seed=3)
    assert training_texts("wiki", lazy("a"), 3000, 128, seed=3) == want and reads == ["a"]
    assert training_texts("wiki", lazy("a"), 3000, 128, seed=3) == want and reads == ["a"]  # read back
    held = held_out_texts("wiki", lazy("a"), 3000, 128, seed=3, skip=2)
    assert held == held_out_texts("wiki", tokenizer, 3000, 128, seed=3, skip=2) and reads == ["a", "a"]
    assert training_texts("wiki", lazy("a"), 3000, 128, seed=4) != want and reads == ["a", "a", "a"]
    assert training_texts("wiki", lazy("b"), 3000, 128, seed=3) == want and reads[-1] == "b"


def test_dictionary_documents_are_clean_prose():
    docs = sources.dictionary_texts()
    assert len(docs) > 10_000 and sum(map(len, docs)) > 17_000_000
    sample = docs[::500]
    assert not any("24 hours per day, 7 days per week" in d for d in sample)  # the package's misplaced etymologies
    assert all(200 < len(d) < 20_000 for d in sample) and all("\n\n" in d or len(d) > 1500 for d in sample)


def test_pretraining_mix_is_half_dictionary_in_every_part(tokenizer):
    from assay.sae.corpus import held_out_texts

    wiki = set(sources.wikipedia_texts())
    train = training_texts("pretrain", tokenizer, 300_000, 512)
    held = held_out_texts("pretrain", tokenizer, 100_000, 512)

    def wiki_share(texts: list[str]) -> float:
        return sum(len(t) for t in texts if t in wiki) / sum(map(len, texts))

    # by characters: Wikipedia and as many characters of dictionary, shuffled together
    assert 0.4 < wiki_share(train) < 0.6 and 0.4 < wiki_share(held) < 0.6
    assert not set(train) & set(held)  # held-out text comes from the other end of the order
    short = training_texts("pretrain", tokenizer, 100_000, 512)
    assert train[: len(short)] == short  # a smaller budget is a prefix of the same order
