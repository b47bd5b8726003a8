"""The served pipeline's tokenization and post-processing (runtime/serving/text.py), without a server."""

import json

import numpy as np
import pytest

from debertrt.core.trained import make_tokenizer
from debertrt.runtime.serving.text import (NO_SEQUENCE, TextEncoder, TextError, answer_spans, classify, decode_texts,
                                           token_entities)


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(path)
    return path / "tokenizer.json", tokenizer


def test_encode_matches_the_checkpoint_tokenizer_and_pads_to_a_multiple(tokenizer_file):
    path, hf = tokenizer_file
    encoder = TextEncoder(str(path), ("input_ids", "attention_mask"), max_length=40, pad_to_multiple_of=16)
    texts = ["d1 d2 b d3", "d4 d5 d6 d7 d8 b d9 d0 d1 d2 d3 d4 d5 d6 d7"]
    out = encoder.encode(texts)
    assert set(out) == {"input_ids", "attention_mask", "OFFSETS", "SEQUENCE_IDS"}  # no token_type_ids: not taken
    assert out["input_ids"].shape == (2, 32) and out["input_ids"].dtype == np.int64  # 17 tokens -> 32
    for row, text in enumerate(texts):
        ids = hf(text)["input_ids"]
        assert out["input_ids"][row, :len(ids)].tolist() == ids
        assert (out["input_ids"][row, len(ids):] == 0).all() and out["attention_mask"][row].sum() == len(ids)
        assert out["SEQUENCE_IDS"][row, 0] == NO_SEQUENCE and out["SEQUENCE_IDS"][row, len(ids) - 1] == NO_SEQUENCE
        assert (out["SEQUENCE_IDS"][row, 1:len(ids) - 1] == 0).all() and (out["SEQUENCE_IDS"][row, len(ids):] == -1).all()
    start, end = out["OFFSETS"][0, 3]
    assert texts[0][start:end] == "b"
    assert encoder.encode(["d1"])["input_ids"].shape == (1, 16)
    capped = TextEncoder(str(path), ("input_ids", "attention_mask"), max_length=20, pad_to_multiple_of=16)
    assert capped.encode([texts[1]])["input_ids"].shape == (1, 20)  # the multiple never passes max_length
    floor = TextEncoder(str(path), ("input_ids", "attention_mask"), max_length=64, min_length=24)
    assert floor.encode(["d1"])["input_ids"].shape == (1, 24)  # an engine profile's shortest sequence


def test_pairs_get_their_token_types(tmp_path):
    from tokenizers import processors

    hf = make_tokenizer()
    vocab = hf.get_vocab()
    hf.backend_tokenizer.post_processor = processors.TemplateProcessing(  # pairs typed as BERT-style checkpoints do
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])])
    hf.save_pretrained(tmp_path)
    encoder = TextEncoder(str(tmp_path / "tokenizer.json"), ("input_ids", "attention_mask", "token_type_ids"),
                          max_length=64, needs_pair=True)
    out = encoder.encode(["d1 d2"], ["d3 b d4"])
    assert out["token_type_ids"][0, :8].tolist() == hf("d1 d2", "d3 b d4", return_token_type_ids=True)["token_type_ids"] == [0] * 4 + [1] * 4
    assert out["SEQUENCE_IDS"][0, :8].tolist() == [-1, 0, 0, -1, 1, 1, 1, -1]
    with pytest.raises(TextError, match="send TEXT .question. and TEXT_PAIR .context."):
        encoder.encode(["d1 d2"])
    with pytest.raises(TextError, match="2 TEXT but 1 TEXT_PAIR"):
        encoder.encode(["d1", "d2"], ["d3"])


def test_refusals_say_what_to_fix(tokenizer_file, tmp_path):
    path, hf = tokenizer_file
    encoder = TextEncoder(str(path), ("input_ids", "attention_mask"), max_length=12)
    with pytest.raises(TextError, match="TEXT 1 is empty"):
        encoder.encode(["d1", "   "])
    with pytest.raises(TextError, match="text 0 is 13 tokens long but the model takes at most 12: shorten or split "
                                        "it .nothing is truncated."):
        encoder.encode(["d1 " * 11])
    assert encoder.encode(["d1 " * 10])["input_ids"].shape == (1, 12)
    # a tokenizer saved with truncation switched on must still refuse, not cut
    hf.backend_tokenizer.enable_truncation(max_length=5)
    hf.save_pretrained(tmp_path)
    hf.backend_tokenizer.no_truncation()
    with pytest.raises(TextError, match="13 tokens long"):
        TextEncoder(str(tmp_path / "tokenizer.json"), ("input_ids",), max_length=12).encode(["d1 " * 11])
    with pytest.raises(TextError, match="TEXT 0 is not UTF-8"):
        decode_texts(np.array([[b"\xff\xfe"]], dtype=object), "TEXT")
    assert decode_texts(np.array([["é".encode()]], dtype=object)) == ["é"]


def test_classify_gives_labels_and_probabilities():
    out = classify(np.array([[0.0, 2.0, 0.0], [3.0, 0.0, 0.0]], np.float32), ["low", "mid", "high"])
    assert out["LABEL"].tolist() == [[b"mid"], [b"low"]]
    assert np.allclose(out["SCORES"].sum(-1), 1) and out["SCORE"][0, 0] == pytest.approx(np.exp(2) / (np.exp(2) + 2))


def test_entities_group_tokens_of_one_type():
    labels = ["O", "B-ITEM", "I-ITEM"]
    text = "red apple and blue pear"
    # tokens: [CLS] red apple and blue pear [SEP] pad
    offsets = np.array([[[0, 0], [0, 3], [4, 9], [10, 13], [14, 18], [19, 23], [0, 0], [0, 0]]], np.int32)
    sequence_ids = np.array([[-1, 0, 0, 0, 0, 0, -1, -1]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1, 1, 0]])
    tags = [0, 1, 2, 0, 1, 1, 1, 0]  # [SEP] tagged B-ITEM must not become an entity: it is no text
    logits = np.full((1, 8, 3), -5.0, np.float32)
    logits[0, np.arange(8), tags] = 5.0
    out = token_entities(logits, sequence_ids, offsets, [text], labels, mask)
    assert out["TOKEN_LABEL_IDS"].tolist() == [[0, 1, 2, 0, 1, 1, 1, -1]]
    entities = json.loads(out["ENTITIES"][0, 0])
    assert [(e["entity"], e["word"], e["start"], e["end"]) for e in entities] == [
        ("ITEM", "red apple", 0, 9), ("ITEM", "blue", 14, 18), ("ITEM", "pear", 19, 23)]  # B- starts a new one
    assert all(0.99 < e["score"] <= 1 for e in entities)


def test_answer_spans_stay_in_the_context_and_in_order():
    context = "d1 d2 d3 d4"
    # [CLS] q [SEP] d1 d2 d3 d4 [SEP]
    sequence_ids = np.array([[-1, 0, -1, 1, 1, 1, 1, -1]], np.int32)
    offsets = np.array([[[0, 0], [0, 2], [0, 0], [0, 2], [3, 5], [6, 8], [9, 11], [0, 0]]], np.int32)
    start = np.array([[9.0, 9.0, 0, 0, 1.0, 3.0, 0, 0]], np.float32)  # the question token is not an answer
    end = np.array([[0, 0, 0, 0, 4.0, 0, 3.0, 9.0]], np.float32)      # nor is [SEP]
    out = answer_spans(start, end, sequence_ids, offsets, [context])
    assert (out["START_TOKEN"][0, 0], out["END_TOKEN"][0, 0]) == (5, 6)  # d3..d4: 3 + 3 beats d2..d2: 1 + 4
    assert out["ANSWER"][0, 0] == b"d3 d4" and (out["ANSWER_START"][0, 0], out["ANSWER_END"][0, 0]) == (6, 11)
    end[0, 4] = 6.0  # d2..d2 (7) is now best; an end before its start (d3 + d2 = 9) is never taken
    out = answer_spans(start, end, sequence_ids, offsets, [context])
    assert (out["START_TOKEN"][0, 0], out["END_TOKEN"][0, 0]) == (4, 4) and out["ANSWER"][0, 0] == b"d2"
    start[0, 3], end[0, 6] = 10.0, 50.0  # d1..d4 would win, but it is 4 tokens long
    out = answer_spans(start, end, sequence_ids, offsets, [context], max_answer_tokens=2)
    assert (out["START_TOKEN"][0, 0], out["END_TOKEN"][0, 0]) == (5, 6)
    assert answer_spans(start, end, sequence_ids, offsets, [context])["START_TOKEN"][0, 0] == 3
    assert 0 < out["SCORE"][0, 0] <= 1
