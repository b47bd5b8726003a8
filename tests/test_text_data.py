"""Text data: never cut silently (refused with counts, --truncate, or windows with --stride merged
back per token / span), fast or slow tokenizers named in the report, multiple-choice files."""

import json

import numpy as np
import pytest

from conftest import WORDS
from debertrt.compiler.cli import main
from debertrt.compiler.export import ExportOptions, export
from debertrt.compiler.parity import parity
from debertrt.core.data import TextOptions, read_examples, text_dataset
from debertrt.core.errors import DebertrtError
from debertrt.core.models import load_model


def sentence(n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(WORDS[int(k)] for k in rng.integers(0, len(WORDS), size=n))


def write_jsonl(path, records):
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    return path


@pytest.fixture(scope="module")
def classifier(text_checkpoint):
    path = text_checkpoint("tiny-deberta-v3", "sequence-classification", num_labels=2)
    return load_model(str(path), "sequence-classification")


@pytest.fixture()
def mixed_lengths(tmp_path):
    """Six examples, two of them longer than 24 tokens."""
    lengths = [3, 30, 5, 4, 40, 6]
    return write_jsonl(tmp_path / "mixed.jsonl", [{"text": sentence(n, k), "label": k % 2}
                                                 for k, n in enumerate(lengths)])


def test_long_examples_are_refused_with_counts_and_fixes(classifier, mixed_lengths):
    """Before: the tokenizer cut them to the limit silently."""
    with pytest.raises(DebertrtError) as info:
        text_dataset(classifier, mixed_lengths, max_length=24)
    message = str(info.value)
    assert "\n" not in message
    assert "2 of 6 examples are longer than 24 tokens" in message and "example 5" in message
    assert "--truncate" in message and "--max-length" in message
    assert "--stride" not in message  # windows are for token classification and question answering


def test_truncate_cuts_and_counts(classifier, mixed_lengths, tmp_path):
    dataset = text_dataset(classifier, mixed_lengths, batch_size=3, max_length=24, text=TextOptions(truncate=True))
    assert max(b["input_ids"].shape[-1] for b in dataset.batches) == 24
    truncated = dataset.describe()["truncated"]
    assert truncated["examples"] == 2 and truncated["limit"] == 24 and truncated["longest"] > 40
    onnx_path = export(classifier, tmp_path / "art", ExportOptions(exporter="torchscript"))
    result = parity(classifier, [onnx_path], dataset, tmp_path / "report")
    assert result["verdict"] == "passed" and result["data"]["truncated"]["examples"] == 2
    markdown = (tmp_path / "report.md").read_text()
    assert "Truncated: 2 examples cut to 24 tokens" in markdown
    assert "Tokenizer: DebertaV2Tokenizer (fast, tokenizer.json)" in markdown


def test_a_model_of_any_length_takes_long_text_whole(classifier, mixed_lengths):
    dataset = text_dataset(classifier, mixed_lengths)  # no --max-length: tiny-deberta-v3 has no position table
    assert "truncated" not in dataset.describe() and dataset.describe()["lengths"]["max"] > 40


def test_cli_refuses_long_text_and_truncate_excludes_stride(classifier, mixed_lengths, tmp_path, capsys):
    code = main(["parity", "--model", classifier.name, "--task", "sequence-classification", "--artifact",
                 str(tmp_path / "none.onnx"), "--data", str(mixed_lengths), "--max-length", "24",
                 "--out", str(tmp_path / "r")])
    assert code == 1 and "2 of 6 examples are longer than 24 tokens" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["parity", "--model", classifier.name, "--task", "sequence-classification", "--artifact", "x.onnx",
              "--truncate", "--stride", "4", "--out", str(tmp_path / "r")])
    assert exit_info.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_stride_is_for_token_and_span_tasks_only(classifier, mixed_lengths):
    with pytest.raises(DebertrtError, match="token-classification and question-answering.*--truncate"):
        text_dataset(classifier, mixed_lengths, max_length=24, text=TextOptions(stride=4))


# ---------------------------------------------------------------------------- windows


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_token_windows_merge_back_onto_every_token(text_checkpoint, tmp_path, padding_side):
    """Logits that name each window token's id: merged per example they must give back the ids of
    the whole text, in order, whichever side the tokenizer pads."""
    path = text_checkpoint("tiny-deberta-v3", "token-classification", padding_side=padding_side)
    ref = load_model(str(path), "token-classification")
    texts = [sentence(60, 1), sentence(4, 2), sentence(33, 3)]
    data = write_jsonl(tmp_path / "long.jsonl", [{"text": t} for t in texts])
    dataset = text_dataset(ref, data, batch_size=4, max_length=16, text=TextOptions(stride=5))
    windows = dataset.windows
    info = dataset.describe()["windows"]
    longer = sum(len(ref.tokenizer(t)["input_ids"]) > 16 for t in texts)
    assert longer >= 2 and info["examples_split"] == longer and info["windows"] > 5 and info["stride"] == 5
    assert max(b["input_ids"].shape[-1] for b in dataset.batches) <= 16
    if padding_side == "left":
        assert any(b["attention_mask"][:, 0].min() == 0 for b in dataset.batches)
    vocab = ref.config.vocab_size
    named = [{"logits": np.eye(vocab, dtype=np.float32)[b["input_ids"]]} for b in dataset.batches]
    merged = windows.merge(named)
    for text, labels in zip(texts, merged):
        assert labels.tolist() == ref.tokenizer(text, add_special_tokens=False)["input_ids"]


def test_token_windows_in_a_parity_report(text_checkpoint, tmp_path):
    ref = load_model(str(text_checkpoint("tiny-deberta-v3", "token-classification")), "token-classification")
    texts = [sentence(n, n) for n in (50, 2, 70, 20)]
    data = write_jsonl(tmp_path / "long.jsonl", [{"text": t} for t in texts])
    longer = sum(len(ref.tokenizer(t)["input_ids"]) > 16 for t in texts)
    assert longer == 3
    with pytest.raises(DebertrtError, match="--stride N to split them"):
        text_dataset(ref, data, max_length=16)
    dataset = text_dataset(ref, data, max_length=16, text=TextOptions(stride=4))
    onnx_path = export(ref, tmp_path / "art", ExportOptions(exporter="torchscript"))
    result = parity(ref, [onnx_path], dataset, tmp_path / "report")
    entry = result["artifacts"][0]
    assert result["verdict"] == "passed"
    assert entry["task"]["agreement"]["merged_label"] == 1.0
    assert result["data"]["examples"] == 4 and result["data"]["windows"]["examples_split"] == longer
    assert "Windows: 3 examples split into windows of 16 tokens sharing 4" in (tmp_path / "report.md").read_text()


def test_question_windows_find_the_span_in_the_context(text_checkpoint, tmp_path):
    """Start and end logits peaked on one context token of one window: the merged answer is that
    token's characters in the context, found in whichever window holds it."""
    path = text_checkpoint("tiny-deberta-v3", "question-answering", num_labels=2)  # start and end logits
    ref = load_model(str(path), "question-answering")
    context = sentence(80, 5)
    data = write_jsonl(tmp_path / "qa.jsonl", [{"text": "where is the cat", "text_pair": context},
                                               {"text": "sun", "text_pair": sentence(6, 6)}])
    with pytest.raises(DebertrtError, match="room for .* tokens of text after 3 special tokens and the question"):
        text_dataset(ref, data, max_length=12, text=TextOptions(stride=6))
    dataset = text_dataset(ref, data, batch_size=3, max_length=40, text=TextOptions(stride=6))
    windows = dataset.windows
    target = [w for w in windows.items if w.example == 0][3]  # a window well inside the context
    outputs = []
    for k, b in enumerate(dataset.batches):
        logits = np.zeros(b["input_ids"].shape, np.float32)
        outputs.append({"start_logits": logits.copy(), "end_logits": logits.copy()})
    column = int(target.columns[4])
    outputs[target.batch]["start_logits"][target.row, column] = 20.0
    outputs[target.batch]["end_logits"][target.row, column] = 20.0
    start, end = windows.merge(outputs)[0]
    assert (start, end) == tuple(int(x) for x in target.offsets[4])
    assert context[start:end].strip() != ""

    onnx_path = export(ref, tmp_path / "art", ExportOptions(exporter="torchscript"))
    result = parity(ref, [onnx_path], dataset, tmp_path / "report")
    assert result["artifacts"][0]["task"]["agreement"]["merged_span"] == 1.0 and result["verdict"] == "passed"


# ---------------------------------------------------------------------------- tokenizers


def protobuf_reads_sentencepiece() -> bool:
    from transformers.convert_slow_tokenizer import import_protobuf

    try:
        import_protobuf()
    except Exception:
        return False
    return True


def test_the_fast_tokenizer_is_used_and_named(text_checkpoint, tmp_path):
    """An spm.model-only checkpoint (as mDeBERTa ships) is converted to a fast tokenizer; where the
    installed protobuf cannot read transformers' sentencepiece gencode, the refusal says so."""
    path = text_checkpoint("tiny-deberta-v3", "sequence-classification", files="spm", num_labels=2)
    if not protobuf_reads_sentencepiece():
        with pytest.raises(DebertrtError, match="spm.model but no tokenizer.json.*protobuf>=7") as error:
            load_model(str(path), "sequence-classification")
        assert "\n" not in str(error.value)
        return
    converted = load_model(str(path), "sequence-classification")
    assert converted.tokenizer.is_fast and converted.tokenizer_source == "converted from spm.model"
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": sentence(5)}])
    assert text_dataset(converted, data).describe()["tokenizer"] == {
        "class": "DebertaV2Tokenizer", "fast": True, "source": "converted from spm.model"}


def test_a_slow_tokenizer_is_named_and_refuses_windows(text_checkpoint, tmp_path, monkeypatch):
    """Where no fast tokenizer can be made, the slow one is used and the report says so."""
    from transformers import AutoTokenizer

    path = text_checkpoint("tiny-deberta-v3", "token-classification")
    original = AutoTokenizer.from_pretrained.__func__

    def no_fast(cls, *args, use_fast=True, **kwargs):
        if use_fast:
            raise ValueError("cannot convert this tokenizer")
        tokenizer = original(cls, *args, **kwargs)
        monkeypatch.setattr(type(tokenizer), "is_fast", property(lambda self: False))
        return tokenizer

    monkeypatch.setattr(AutoTokenizer, "from_pretrained", classmethod(no_fast))
    ref = load_model(str(path), "token-classification")
    assert ref.tokenizer_source == "slow: cannot convert this tokenizer"
    data = write_jsonl(tmp_path / "d.jsonl", [{"text": sentence(40)}])
    assert text_dataset(ref, data).describe()["tokenizer"]["fast"] is False
    with pytest.raises(DebertrtError, match="--stride needs a fast tokenizer"):
        text_dataset(ref, data, max_length=16, text=TextOptions(stride=2))


# ---------------------------------------------------------------------------- multiple choice files


def test_multiple_choice_files(tmp_path):
    jsonl = write_jsonl(tmp_path / "mc.jsonl", [{"text": "a", "choices": ["b", "c"], "label": 1}])
    assert read_examples(jsonl) == ([("a", ["b", "c"])], [1])
    csv_path = tmp_path / "mc.csv"
    csv_path.write_text("text,choice0,choice1,choice2,label\nq,x,y,z,2\n")
    assert read_examples(csv_path) == ([("q", ["x", "y", "z"])], [2])
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"text": "a", "choices": "b"}])
    with pytest.raises(DebertrtError, match="non-empty list of strings"):
        read_examples(bad)


def test_multiple_choice_data_shapes_and_checks(text_checkpoint, tmp_path):
    ref = load_model(str(text_checkpoint("tiny-deberta-v3", "multiple-choice")), "multiple-choice")
    data = write_jsonl(tmp_path / "mc.jsonl", [{"text": sentence(4, k), "choices": [sentence(3 + j, k + j) for j in
                                                                                    range(3)], "label": k % 3}
                                               for k in range(5)])
    dataset = text_dataset(ref, data, batch_size=2)
    assert [b["input_ids"].shape[:2] for b in dataset.batches] == [(2, 3), (2, 3), (1, 3)]
    assert [len(l) for l in dataset.labels] == [2, 2, 1]
    uneven = write_jsonl(tmp_path / "uneven.jsonl", [{"text": "a", "choices": ["b", "c"]},
                                                     {"text": "a", "choices": ["b"]}])
    with pytest.raises(DebertrtError, match="the same number"):
        text_dataset(ref, uneven)
    with pytest.raises(DebertrtError, match="has no choices"):
        text_dataset(ref, write_jsonl(tmp_path / "plain.jsonl", [{"text": "a"}]))
