"""Shared fixtures. Exports are slow (a dynamo export takes ~15-25 s here), so each
(preset, task, exporter, config overrides) is exported once per test session."""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """``exported(preset, task, exporter, overrides=None) -> Path`` of ``model.onnx``, memoised.

    The export is the library's default (validated against PyTorch, manifest written);
    treat the directory as read-only: write derived artifacts into your own tmp_path.
    """
    from debertrt.compiler.export import ExportOptions, export
    from debertrt.core.models import load_model

    cache = {}

    def get(preset: str, task: str, exporter: str = "dynamo", overrides: dict | None = None):
        key = (preset, task, exporter, json.dumps(overrides or {}, sort_keys=True))
        if key not in cache:
            name = f"{preset}-{task}-{exporter}" + (f"-{len(cache)}" if overrides else "")
            out = tmp_path_factory.mktemp(name, numbered=True)
            ref = load_model(preset, task, config_overrides=overrides)
            cache[key] = export(ref, out, ExportOptions(exporter=exporter))
        return cache[key]

    return get


WORDS = ("the cat sat on a mat dog ran in park bird sang song fish swim sea sun is hot today rain fell "
         "town big small red blue green tree house road car").split()


@pytest.fixture(scope="session")
def text_model(tmp_path_factory):
    """``text_model(task, files="json", padding_side="right", preset="tiny-deberta-v3", **config) -> Path``:
    a save_pretrained directory of a tiny preset with ``task``'s head and a SentencePiece-style
    unigram tokenizer: tokenizer.json ("json", trained with tokenizers) or only spm.model ("spm",
    trained with sentencepiece, converted to a fast tokenizer when loaded), memoised."""
    cache = {}

    def get(task: str, files: str = "json", padding_side: str = "right", preset: str = "tiny-deberta-v3",
            **config):
        from debertrt.core.models import build_from_config, preset_config

        key = (task, files, padding_side, preset, json.dumps(config, sort_keys=True))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"text-{task}-{files}")
            sentences = [" ".join(WORDS[(i * 7 + k) % len(WORDS)] for k in range(12)) for i in range(60)]
            if files == "json":
                _unigram_tokenizer(sentences, padding_side).save_pretrained(path)
            else:
                _sentencepiece_model(sentences, path, padding_side)
            heads = {"num_labels": 2} if task == "question-answering" else {}  # start and end logits
            build_from_config(preset_config(preset, **{**heads, **config}), task).save_pretrained(path)
            cache[key] = path
        return cache[key]

    return get


SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]  # ids 0..4, [PAD] = the presets' pad_token_id


def _unigram_tokenizer(sentences, padding_side):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import DebertaV2TokenizerFast

    tok = Tokenizer(models.Unigram())  # DeBERTa v2/v3 tokenizers are SentencePiece unigram models
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(sentences, trainers.UnigramTrainer(vocab_size=80, special_tokens=SPECIALS,
                                                               unk_token="[UNK]"))
    return DebertaV2TokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", cls_token="[CLS]",
                                  sep_token="[SEP]", mask_token="[MASK]", padding_side=padding_side)


def _sentencepiece_model(sentences, path, padding_side):
    import sentencepiece

    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_prefix=str(path / "spm"), vocab_size=80, model_type="unigram",
        pad_id=0, unk_id=1, bos_id=2, eos_id=3, pad_piece="[PAD]", unk_piece="[UNK]", bos_piece="[CLS]",
        eos_piece="[SEP]", user_defined_symbols=["[MASK]"], hard_vocab_limit=False, minloglevel=2)
    (path / "spm.vocab").unlink()
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "DebertaV2Tokenizer", "padding_side": padding_side}))
