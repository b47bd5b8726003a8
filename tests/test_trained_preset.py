"""The ``tiny-deberta-v3-trained`` preset: a deterministic, cached, genuinely trained classifier.

The first run trains it (about a minute on two cores) into ``$DEBERTRT_CACHE`` (default
``~/.cache/debertrt``); later runs load the cached ``save_pretrained`` directory.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from debertrt.core import trained
from debertrt.core.errors import DebertrtError


@pytest.fixture(scope="session")
def trained_ref():
    return trained.load("sequence-classification")


def test_other_tasks_are_refused_before_any_training():
    start = time.perf_counter()
    with pytest.raises(DebertrtError, match="sequence-classification only"):
        trained.load("masked-lm")
    with pytest.raises(DebertrtError, match="unknown task"):
        trained.load("summarization")
    assert time.perf_counter() - start < 5


def test_synthetic_task_is_deterministic_and_balanced():
    texts, labels = trained.make_examples(600, seed=7)
    again = trained.make_examples(600, seed=7)
    assert (texts, labels) == again
    assert trained.make_examples(5, seed=8)[0] != texts[:5]
    assert all(trained.label_of(t) == y for t, y in zip(texts, labels))
    counts = np.bincount(labels, minlength=3)
    assert counts.min() > 0.15 * len(labels), counts          # no class is rare
    words = texts[0].split()
    assert words.count(trained.MARKER) == 1 and set(words) <= set(trained.VOCAB)


def test_label_depends_on_relative_position_only():
    # the same digits around the marker give the same label wherever the window sits
    window = "d9 d9 d9 b d9 d9 d9"                      # sum 54 -> high
    assert trained.label_of(window) == 2
    assert trained.label_of("d0 d0 d0 d0 " + window) == 2
    assert trained.label_of("d9 d9 d9 d0 b d0 d0 d0 d9 d9") == 0   # the 9s are outside the window


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    from debertrt.core.artifacts import CACHE_ENV

    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    path = trained.checkpoint_dir()
    assert path.parent == tmp_path and path.name.startswith(trained.NAME + "-")
    assert trained.recipe_hash() in path.name


def test_trained_model_is_cached_accurate_and_carries_its_eval_set(trained_ref):
    ref = trained_ref
    path = trained.checkpoint_dir()
    info = json.loads((path / "training.json").read_text())
    assert info["recipe_hash"] == trained.recipe_hash()
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert ref.name == trained.NAME and ref.task == "sequence-classification"
    assert ref.version == "v3" and ref.config.hidden_size == 64 and ref.config.num_hidden_layers == 2

    data = ref.own_data("parity")
    assert data is not None and data.labels is not None and len(data) == trained.RECIPE["eval"]["examples"]
    held_out = {purpose: ref.own_data(purpose) for purpose in ("calibration", "fallback")}
    texts = {p: {tuple(r[m == 1]) for b in d.batches for r, m in zip(b["input_ids"], b["attention_mask"])}
             for p, d in [("parity", data), *held_out.items()]}
    assert not texts["parity"] & texts["fallback"] and not texts["parity"] & texts["calibration"], \
        "the purposes' held-out sets must not share examples"
    assert any((b["attention_mask"] == 0).any() for b in data.batches), "the eval set should have padding"

    from debertrt.core.compare import accuracy
    from debertrt.runtime.runners import TorchRunner

    with TorchRunner(ref) as runner:
        outputs = [runner.infer(b) for b in data.batches]
    acc = accuracy(ref.task, outputs, data.labels)["value"]
    print(f"held-out accuracy {acc:.4f} (training.json: {info['eval_accuracy']:.4f}, "
          f"trained in {info['train_seconds']} s)")
    assert acc == pytest.approx(info["eval_accuracy"])
    assert 0.95 <= acc < 1.0, "the model must have learned the task, with a few close calls left"

    start = time.perf_counter()
    again = trained.load("sequence-classification")           # from the cache: no retraining
    assert time.perf_counter() - start < 20
    assert (path / "training.json").read_text() == json.dumps(info, indent=2) + "\n"
    for a, b in zip(ref.module.state_dict().values(), again.module.state_dict().values()):
        assert np.array_equal(a.numpy(), b.numpy())


def test_data_files_go_through_the_preset_tokenizer(trained_ref, tmp_path):
    from debertrt.core.data import text_dataset

    path = trained.write_examples(tmp_path / "calib.jsonl", 40, seed=3)
    data = text_dataset(trained_ref, path, batch_size=16)
    texts, labels = trained.make_examples(40, seed=3)
    assert np.concatenate(data.labels).tolist() == labels
    direct = trained.encode(trained_ref.tokenizer, texts[:16])
    assert np.array_equal(data.batches[0]["input_ids"], direct["input_ids"])
    assert data.batches[0]["input_ids"][0, 0] == trained.VOCAB.index("[CLS]")


def test_preset_is_registered_with_load_model():
    """``compiler.models.EXTRA_PRESETS`` maps the name to ``debertrt.core.trained:load``."""
    from debertrt.core.models import EXTRA_PRESETS, load_model

    assert EXTRA_PRESETS.get(trained.NAME) == "debertrt.core.trained:load"
    ref = load_model(trained.NAME, "sequence-classification")
    assert ref.name == trained.NAME and ref.own_data is not None
    with pytest.raises(DebertrtError):
        load_model(trained.NAME, "question-answering")
