"""Corpus reading, tokenizer, token store, pair generation and masking statistics."""

from __future__ import annotations

import io

import numpy as np
import pytest

from bertserve.training.corpus import (
    MAX_SENTENCE_CHARS,
    Corpus,
    CorpusError,
    CorpusStats,
    read_lines,
    split_documents,
)
from bertserve.training.masking import Masker
from bertserve.training.pairs import IS_NEXT, NOT_NEXT, PairGenerator
from bertserve.training.token_store import TokenStore, build_or_load
from bertserve.training.tokenizer import SpecialIds, continuation_mask
from tests.conftest import DATA

SPECIALS = SpecialIds(pad=0, unk=1, cls=2, sep=3, mask=4)


# -- corpus -------------------------------------------------------------------------------------
def test_documents_are_split_on_blank_lines():
    text = "a b c.\nd e f.\n\n\n g h i. \n\nj k l.\n"
    documents = list(split_documents(read_lines(io.StringIO(text))))
    assert documents == [["a b c.", "d e f."], ["g h i."], ["j k l."]]


def test_a_huge_line_streams_in_bounded_pieces(tmp_path):
    import tracemalloc

    path = tmp_path / "one-line.txt"
    word = "lorem ipsum dolor sit amet "
    path.write_text(word * 200_000 + "\n\nsecond document.\n")  # 5.4 MB, one line
    with open(path, encoding="utf-8") as handle:
        tracemalloc.start()
        longest = pieces = 0
        for piece, _ in read_lines(handle):  # memory per piece, not per line
            longest, pieces = max(longest, len(piece)), pieces + 1
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    assert longest <= MAX_SENTENCE_CHARS and pieces > 500
    assert peak < 20 * MAX_SENTENCE_CHARS  # never the 5.4 MB line at once
    documents = list(Corpus.open([str(path)]).documents(CorpusStats()))
    assert len(documents) == 2 and documents[1] == ["second document."]
    assert " ".join(documents[0]).split() == (word * 200_000).split()  # nothing lost or cut


def test_bad_bytes_are_replaced_and_counted(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"good line\n\xff\xfe broken\n\nnext doc\n")
    stats = CorpusStats()
    docs = list(Corpus.open([str(path)]).documents(stats))
    assert stats.bad_bytes == 2 and stats.bad_files == [str(path)]
    assert docs[0][1] == "\ufffd\ufffd broken" and len(docs) == 2


@pytest.mark.parametrize("spec", ["missing.txt", "emptydir", "*.nomatch"])
def test_unusable_corpus_paths_are_clear_errors(tmp_path, spec, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(CorpusError, match=r"does not exist|no \*\.txt|matches no files"):
        Corpus.open([spec])


def test_empty_corpus_is_a_clear_error(tmp_path, english_tokenizer):
    (tmp_path / "empty.txt").write_text("\n\n  \n")
    with pytest.raises(CorpusError, match="holds no text"):
        build_or_load(Corpus.open([str(tmp_path / "empty.txt")]), english_tokenizer, tmp_path)


def test_default_corpus_ships_english_and_chinese():
    stats = CorpusStats()
    docs = list(Corpus.open([]).documents(stats))
    assert len(docs) > 1000 and stats.sentences > 20_000 and stats.bad_bytes == 0
    text = "".join(docs[0]) + "".join(docs[-1])
    assert any("a" <= ch <= "z" for ch in text) and any("\u4e00" <= ch <= "\u9fff" for ch in text)


# -- tokenizer ----------------------------------------------------------------------------------
def test_special_tokens_come_first(english_tokenizer):
    assert SpecialIds.of(english_tokenizer) == SPECIALS


def test_chinese_is_one_character_per_token(english_tokenizer):
    text = "中文维基百科是一个自由的百科全书"
    tokens = english_tokenizer.encode(text, add_special_tokens=False).tokens
    assert tokens == list(text)


def test_tokenizer_matches_transformers_reference(english_tokenizer, tmp_path):
    legacy = pytest.importorskip("transformers.models.bert.tokenization_bert_legacy")
    from bertserve.training.tokenizer import save_tokenizer

    save_tokenizer(english_tokenizer, tmp_path, lowercase=True, max_len=128)
    reference = legacy.BertTokenizerLegacy(str(tmp_path / "vocab.txt"), do_lower_case=True)
    lines = (DATA / "english.txt").read_text().splitlines()[:40]
    lines += (DATA / "chinese.txt").read_text().splitlines()[:40]
    lines += ["Héllo, WORLD! 2015年5月23日 naïve café — “quotes”"]
    for line in lines:
        ours = english_tokenizer.encode(line, add_special_tokens=False).tokens
        assert ours == reference.tokenize(line), line


def test_token_store_round_trips_and_is_cached(english_tokenizer, tmp_path):
    corpus = Corpus.open([str(DATA / "english.txt")])
    store, cached = build_or_load(corpus, english_tokenizer, tmp_path)
    again, cached_again = build_or_load(corpus, english_tokenizer, tmp_path)
    assert (cached, cached_again) == (False, True)
    docs = list(corpus.documents(CorpusStats()))
    assert store.num_documents == len(docs)
    first_sentence = english_tokenizer.encode(docs[0][0], add_special_tokens=False).ids
    assert store.sentence(0).tolist() == first_sentence
    assert np.array_equal(np.asarray(again.tokens), np.asarray(store.tokens))


# -- pairs and masking on a synthetic store -----------------------------------------------------
def _synthetic_store(num_docs: int = 60, seed: int = 0) -> TokenStore:
    """Token ids are 5 + global position, so a token tells its document and its order."""
    rng = np.random.default_rng(seed)
    sentence_lengths, doc_sizes = [], []
    for _ in range(num_docs):
        n = int(rng.integers(2, 25))
        doc_sizes.append(n)
        sentence_lengths.extend(rng.integers(3, 40, size=n).tolist())
    sentences = np.concatenate([[0], np.cumsum(sentence_lengths)])
    documents = np.concatenate([[0], np.cumsum(doc_sizes)])
    tokens = np.arange(sentences[-1], dtype=np.int32) + 5
    return TokenStore(tokens, sentences, documents, {})


def _doc_of(store: TokenStore, token: int) -> int:
    sentence = np.searchsorted(store.sentences, token - 5, side="right") - 1
    return int(np.searchsorted(store.documents, sentence, side="right") - 1)


def test_pairs_follow_the_original_generator():
    store = _synthetic_store()
    gen = PairGenerator(store, np.arange(store.num_documents), SPECIALS, 128, 0.1, True, seed=0)
    labels, lengths = [], []
    for _ in range(10_000):
        inst = next(gen)
        seq = inst.tokens
        seps = np.flatnonzero(seq == SPECIALS.sep)
        assert seq[0] == SPECIALS.cls and len(seps) == 2 and seps[1] == len(seq) - 1
        assert len(seq) <= 128
        a, b = seq[1 : seps[0]], seq[seps[0] + 1 : -1]
        assert len(a) and len(b)
        assert (inst.segments[: seps[0] + 1] == 0).all() and (
            inst.segments[seps[0] + 1 :] == 1
        ).all()
        doc_a = {_doc_of(store, t) for t in a}
        doc_b = {_doc_of(store, t) for t in b}
        assert len(doc_a) == 1 and len(doc_b) == 1
        if inst.nsp_label == IS_NEXT:
            assert doc_a == doc_b and a.max() < b.min()  # B continues A
        else:
            assert inst.nsp_label == NOT_NEXT and doc_a != doc_b  # never A's own document
        labels.append(inst.nsp_label)
        lengths.append(len(seq))
    assert abs(np.mean(np.array(labels) == IS_NEXT) - 0.5) <= 0.015
    assert np.mean(np.array(lengths) < 64) > 0.05  # short_seq_prob makes some short pairs


def test_generator_state_round_trips():
    store = _synthetic_store()
    gen = PairGenerator(store, np.arange(store.num_documents), SPECIALS, 64, 0.1, True, seed=3)
    for _ in range(137):
        next(gen)
    state = gen.state_dict()
    expected = [next(gen).tokens.tolist() for _ in range(50)]
    other = PairGenerator(store, np.arange(store.num_documents), SPECIALS, 64, 0.1, True, seed=3)
    other.load_state_dict(state)
    assert [next(other).tokens.tolist() for _ in range(50)] == expected


def test_no_nsp_gives_single_segments():
    store = _synthetic_store()
    gen = PairGenerator(store, np.arange(store.num_documents), SPECIALS, 64, 0.0, False, seed=0)
    for _ in range(200):
        inst = next(gen)
        assert inst.nsp_label == -1 and inst.segments.sum() == 0 and len(inst.tokens) <= 64
        assert (inst.tokens == SPECIALS.sep).sum() == 1


def test_packing_fills_every_slot_and_keeps_every_token_in_order():
    store = _synthetic_store()
    docs = np.arange(store.num_documents)
    gen = PairGenerator(store, docs, SPECIALS, 64, 0.1, False, seed=0, pack=True)
    stream = []
    for _ in range(150):  # less than one epoch of the store
        inst = next(gen)
        assert len(inst.tokens) == 64 and inst.nsp_label == -1  # no padding, ever
        assert inst.tokens[0] == SPECIALS.cls and inst.tokens[-1] == SPECIALS.sep
        stream.extend(inst.tokens[1:-1].tolist())
    # the text runs on across sequences: every token once, in epoch order, [SEP] between docs
    expected = []
    for doc in np.random.default_rng([0, 0]).permutation(docs):
        first, stop = store.sentence_range(int(doc))
        expected.extend(store.tokens[store.sentences[first] : store.sentences[stop]].tolist())
        expected.append(SPECIALS.sep)
    body = [t for t in stream if t != SPECIALS.sep]
    assert body == [t for t in expected if t != SPECIALS.sep][: len(body)]
    for i in np.flatnonzero(np.array(stream) == SPECIALS.sep):  # only between documents
        if 0 < i < len(stream) - 1:
            assert _doc_of(store, stream[i - 1]) != _doc_of(store, stream[i + 1])


def test_packed_generator_resumes_mid_sentence():
    store = _synthetic_store()
    docs = np.arange(store.num_documents)
    gen = PairGenerator(store, docs, SPECIALS, 48, 0.0, False, seed=5, pack=True)
    for _ in range(77):
        next(gen)
    state = gen.state_dict()
    assert state["tok_pos"] >= 0
    expected = [next(gen).tokens.tolist() for _ in range(40)]
    other = PairGenerator(store, docs, SPECIALS, 48, 0.0, False, seed=5, pack=True)
    other.load_state_dict(state)
    assert [next(other).tokens.tolist() for _ in range(40)] == expected


def test_sequence_length_can_grow_mid_run_and_resume_keeps_it():
    store = _synthetic_store()
    docs = np.arange(store.num_documents)
    gen = PairGenerator(store, docs, SPECIALS, 32, 0.0, True, seed=1)
    assert max(len(next(gen).tokens) for _ in range(200)) <= 32
    gen.set_max_seq_len(128)
    state = gen.state_dict()
    lengths = [len(next(gen).tokens) for _ in range(200)]
    assert max(lengths) <= 128 and max(lengths) > 64
    other = PairGenerator(store, docs, SPECIALS, 32, 0.0, True, seed=1)
    other.load_state_dict(state)  # a run resumed in its long phase stays there
    assert [len(next(other).tokens) for _ in range(200)] == lengths


def test_packing_needs_no_nsp():
    store = _synthetic_store()
    with pytest.raises(ValueError, match="--no-nsp"):
        PairGenerator(store, np.arange(10), SPECIALS, 64, 0.0, True, seed=0, pack=True)


def test_masking_statistics_over_10000_pairs():
    store = _synthetic_store()
    vocab = int(store.tokens[-1]) + 1
    gen = PairGenerator(store, np.arange(store.num_documents), SPECIALS, 128, 0.1, True, seed=1)
    masker = Masker(SPECIALS, vocab, 0.15, max_predictions=20)
    rng = np.random.default_rng(0)
    candidates = chosen = as_mask = as_random = kept = 0
    for _ in range(10_000):
        tokens = next(gen).tokens
        m = masker(tokens, rng)
        special = np.isin(tokens, [SPECIALS.cls, SPECIALS.sep, SPECIALS.pad])
        assert not special[m.positions].any()
        assert (m.input_ids[special] == tokens[special]).all()
        assert (m.labels == tokens[m.positions]).all()
        unchosen = np.setdiff1d(np.arange(len(tokens)), m.positions)
        assert (m.input_ids[unchosen] == tokens[unchosen]).all()
        seen = m.input_ids[m.positions]
        candidates += int((~special).sum())
        chosen += len(m.positions)
        as_mask += int((seen == SPECIALS.mask).sum())
        kept += int((seen == m.labels).sum())
        as_random += int(((seen != SPECIALS.mask) & (seen != m.labels)).sum())
    assert abs(chosen / candidates - 0.15) <= 0.005
    assert abs(as_mask / chosen - 0.8) <= 0.015
    assert abs(as_random / chosen - 0.1) <= 0.015
    assert abs(kept / chosen - 0.1) <= 0.015


def test_whole_word_masking_takes_all_pieces(english_tokenizer):
    ids = english_tokenizer.encode("unbelievably extraordinary circumstances " * 6).ids
    tokens = np.array(ids)
    masker = Masker(
        SPECIALS, english_tokenizer.get_vocab_size(), 0.3, 20, continuation_mask(english_tokenizer)
    )
    pieces = continuation_mask(english_tokenizer)[tokens]
    rng = np.random.default_rng(0)
    for _ in range(50):
        chosen = set(masker(tokens, rng).positions.tolist())
        for pos in range(1, len(tokens)):
            if pieces[pos]:  # a '##' piece is chosen exactly when the piece before it is
                assert (pos in chosen) == (pos - 1 in chosen)


def test_static_masking_repeats_and_dynamic_does_not():
    from bertserve.training.batches import BatchSource

    store = _synthetic_store()
    masker = Masker(SPECIALS, int(store.tokens[-1]) + 1)

    def two_maskings(static: bool) -> tuple[list[int], list[int]]:
        gen = PairGenerator(store, np.arange(4), SPECIALS, 128, 0.0, True, seed=0)
        source = BatchSource(gen, masker, SPECIALS.pad, static_masking=static)
        pair = next(gen)
        first = masker(pair.tokens, source._mask_rng(pair)).positions.tolist()
        return first, masker(pair.tokens, source._mask_rng(pair)).positions.tolist()

    first, again = two_maskings(static=True)
    assert first == again  # the same pair always gets the same mask
    first, again = two_maskings(static=False)
    assert first != again  # a fresh mask each time the pair is drawn
