"""Shared fixtures. Exports are slow (a dynamo export takes ~5-20 s here), so each
(preset, task, exporter, config overrides) is exported once per test run, shared by the
pytest-xdist workers through a folder they all see and a file lock."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from filelock import FileLock


def run_shared_dir(tmp_path_factory) -> Path:
    """A folder every xdist worker of this run shares (this run's temp folder without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(preset, task, exporter, overrides=None) -> Path`` of ``model.onnx``, once per run.

    The export is the library's default (validated against PyTorch, manifest written);
    treat the directory as read-only: write derived artifacts into your own tmp_path.
    """
    from debertrt.compiler.export import ExportOptions, export
    from debertrt.core.models import load_model

    shared = run_shared_dir(tmp_path_factory) / "exports"
    shared.mkdir(exist_ok=True)

    def get(preset: str, task: str, exporter: str = "dynamo", overrides: dict | None = None):
        settings = json.dumps(overrides or {}, sort_keys=True)
        name = f"{preset}-{task}-{exporter}" + (f"-{hashlib.sha1(settings.encode()).hexdigest()[:8]}"
                                                if overrides else "")
        out, done = shared / name, shared / f"{name}.done"
        with FileLock(str(shared / f"{name}.lock")):
            if not done.exists():
                ref = load_model(preset, task, config_overrides=overrides)
                export(ref, out, ExportOptions(exporter=exporter))
                done.touch()
        return out / "model.onnx"

    return get


SENTENCES = [
    "the cat sat on the mat", "a dog ran in the park", "the bird sang a song",
    "fish swim in the sea", "the sun is hot today", "rain fell on the town",
]


# The words of SENTENCES: text made of them tokenizes without unknown pieces.
WORDS = sorted({word for sentence in SENTENCES for word in sentence.split()})
SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4; [PAD] is the presets' pad_token_id


@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory):
    """``text_checkpoint(preset, task, files="json", padding_side="right", **config) -> Path``: a
    save_pretrained directory with random weights and a DeBERTa-v2 tokenizer (SentencePiece
    unigram, as v2/v3 have) trained on SENTENCES, memoised: as tokenizer.json ("json", trained with
    tokenizers) or as only spm.model ("spm", trained with sentencepiece; converted to a fast
    tokenizer when loaded)."""
    cache = {}

    def get(preset: str, task: str, files: str = "json", padding_side: str = "right", **config):
        from debertrt.core.models import build_from_config, preset_config

        key = (preset, task, files, padding_side, json.dumps(config, sort_keys=True))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"ckpt-{preset}-{task}-{files}")
            if files == "json":
                _unigram_tokenizer(padding_side).save_pretrained(path)
            else:
                _sentencepiece_model(path, padding_side)
            build_from_config(preset_config(preset, **config), task).save_pretrained(path)
            cache[key] = path
        return cache[key]

    return get


def _unigram_tokenizer(padding_side: str):
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import DebertaV2TokenizerFast

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(SENTENCES, trainers.UnigramTrainer(vocab_size=100, special_tokens=SPECIALS,
                                                               unk_token="[UNK]"))
    return DebertaV2TokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", padding_side=padding_side)


def _sentencepiece_model(path: Path, padding_side: str) -> None:
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES * 10), model_prefix=str(path / "spm"), vocab_size=100,
        model_type="unigram", pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]", unk_piece="[UNK]",
        bos_piece="[CLS]", eos_piece="[SEP]", user_defined_symbols=["[MASK]"], hard_vocab_limit=False,
        minloglevel=2)
    (path / "spm.vocab").unlink()
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "padding_side": padding_side}))
