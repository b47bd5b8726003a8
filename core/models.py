"""Reference models: a local checkpoint directory or a built-in tiny preset, with one of six heads.

The PyTorch fp32 model loaded here is the reference every compiled artifact is judged
against.

Length rule: a model with an absolute position table (``position_biased_input=True``: some v1
and v2 configs) takes at most ``max_position_embeddings`` tokens; one without (every v3 and
mDeBERTa-v3, v2-xlarge, v1 base/large) has only relative positions and takes any length
(``max_sequence`` is then None).
"""

from __future__ import annotations

import hashlib
import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from .errors import DebertrtError, InternalError, first_line

# task -> (transformers Auto class name, output names in order)
TASKS: dict[str, tuple[str, tuple[str, ...]]] = {
    "base": ("AutoModel", ("last_hidden_state",)),
    "masked-lm": ("AutoModelForMaskedLM", ("logits",)),
    "sequence-classification": ("AutoModelForSequenceClassification", ("logits",)),
    "token-classification": ("AutoModelForTokenClassification", ("logits",)),
    "question-answering": ("AutoModelForQuestionAnswering", ("start_logits", "end_logits")),
    "multiple-choice": ("AutoModelForMultipleChoice", ("logits",)),
}
# Tasks whose inputs are [batch, choices, sequence] (one row of tokens per choice); all others take
# [batch, sequence].
CHOICE_TASKS = frozenset({"multiple-choice"})
# Tasks whose head reads the first position (DeBERTa's ContextPooler): under left padding that is a
# pad token, so their predictions on left-padded rows mean nothing (in PyTorch too).
POOLED_TASKS = frozenset({"sequence-classification", "multiple-choice"})

SUPPORTED_MODEL_TYPES = ("deberta", "deberta-v2")

# Small enough for CI, with relative attention really on (the transformers defaults
# exercise none). initializer_range is raised so attention scores, and so the positional
# terms, are large enough that a wrong index shows up in parity.
_TINY_COMMON = dict(
    vocab_size=256,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=64,
    max_position_embeddings=512,
    relative_attention=True,
    pos_att_type=["c2p", "p2c"],
    initializer_range=0.1,
    num_labels=3,
    pad_token_id=0,
)

PRESETS: dict[str, dict] = {
    "tiny-deberta": dict(
        model_type="deberta", **_TINY_COMMON,
        max_relative_positions=128, position_biased_input=False, type_vocab_size=0,
    ),
    "tiny-deberta-v2": dict(
        model_type="deberta-v2", **_TINY_COMMON,
        max_relative_positions=64, position_buckets=-1, share_att_key=False, norm_rel_ebd="none",
        conv_kernel_size=3, conv_act="gelu", position_biased_input=True, type_vocab_size=2,
    ),
    "tiny-deberta-v3": dict(
        model_type="deberta-v2", **_TINY_COMMON,
        max_relative_positions=512, position_buckets=256, share_att_key=True, norm_rel_ebd="layer_norm",
        position_biased_input=False, type_vocab_size=0,
    ),
}

PRESET_SEED = 0


@dataclass
class ReferenceModel:
    """A DeBERTa model with one head, in eval mode and fp32, plus what describes it."""

    name: str                      # preset name or checkpoint path
    task: str
    config: object                 # transformers PretrainedConfig
    module: object                 # torch.nn.Module; None until ``torch_module()`` loads ``checkpoint``'s weights
    tokenizer: object | None = None
    tokenizer_source: str | None = None  # where the tokenizer came from (tokenizer.json, converted, slow ...)
    # a preset's own held-out examples: purpose ("calibration", "fallback", "parity") -> ``data.Dataset``,
    # disjoint sets used when no data file is given
    own_data: object | None = None
    checkpoint: str | None = None  # the save_pretrained directory the weights come from, if any

    def torch_module(self):
        """The PyTorch module, its weights loaded from ``checkpoint`` on first use (a build whose stages
        run in child processes never loads them in the parent)."""
        if self.module is None:
            if self.checkpoint is None:
                raise InternalError(f"{self.name}: the PyTorch module was released and has no checkpoint")
            self.module = _load_weights(Path(self.checkpoint), self.task)
        return self.module

    def weight_bytes(self) -> int:
        """Bytes of the weights: the checkpoint's weight files, or the loaded module's parameters."""
        if self.module is not None:
            return sum(p.numel() * p.element_size() for p in self.module.parameters())
        if self.checkpoint is not None:
            return sum(f.stat().st_size for f in _weight_files(Path(self.checkpoint)))
        return 0

    @property
    def input_names(self) -> tuple[str, ...]:
        return input_names(self.config)

    @property
    def output_names(self) -> tuple[str, ...]:
        return TASKS[self.task][1]

    @property
    def input_axes(self) -> tuple[str, ...]:
        return input_axes(self.task)

    @property
    def max_sequence(self) -> int | None:
        """The longest sequence the model takes, or None when it takes any length (see the length rule)."""
        return max_sequence_of(self.config)

    @property
    def version(self) -> str:
        return model_version(self.config)

    def config_hash(self) -> str:
        return config_hash(self.config)

    def forward_module(self):
        """The model as a module taking the inputs positionally (``input_names`` order) and returning
        the outputs as a tuple (``output_names`` order): what the exporters trace and runners call."""
        import torch

        class PositionalForward(torch.nn.Module):
            def __init__(self, model, output_names):
                super().__init__()
                self.model = model
                self.output_names = output_names

            def forward(self, input_ids, attention_mask, token_type_ids=None):
                out = self.model(input_ids=input_ids, attention_mask=attention_mask,
                                 token_type_ids=token_type_ids, return_dict=True)
                return tuple(out[name] for name in self.output_names)

        # eval() on the wrapper too: the torchscript exporter restores the *wrapper's* training
        # flag on every child afterwards, which would silently switch dropout back on.
        return PositionalForward(self.torch_module(), self.output_names).eval()


def input_names(config) -> tuple[str, ...]:
    names = ("input_ids", "attention_mask")
    return names + ("token_type_ids",) if getattr(config, "type_vocab_size", 0) > 0 else names


def input_axes(task: str) -> tuple[str, ...]:
    """The axes of every input of ``task``'s model."""
    return ("batch", "choices", "sequence") if task in CHOICE_TASKS else ("batch", "sequence")


def has_absolute_positions(config) -> bool:
    """Whether the embeddings add a position table of ``max_position_embeddings`` rows (transformers
    reads ``position_biased_input`` with a default of True for v1 and v2 alike)."""
    return bool(getattr(config, "position_biased_input", True))


def max_sequence_of(config) -> int | None:
    """``max_position_embeddings`` for a model with absolute positions; None (any length) without."""
    return int(config.max_position_embeddings) if has_absolute_positions(config) else None


def model_version(config) -> str:
    """'v1' for DeBERTa, 'v3' for v2-architecture models with log buckets, else 'v2'."""
    return version_of(config.model_type, getattr(config, "position_buckets", -1))


def version_of(model_type: str, position_buckets: int) -> str:
    if model_type == "deberta":
        return "v1"
    return "v3" if position_buckets > 0 else "v2"


def config_hash(config) -> str:
    text = json.dumps(config.to_diff_dict(), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_task(task: str) -> str:
    if task not in TASKS:
        raise DebertrtError(f"unknown task {task!r}: choose one of {', '.join(TASKS)}")
    return task


def preset_config(name: str, **overrides):
    from transformers import AutoConfig

    spec = dict(PRESETS[name])
    spec.update(overrides)
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(model_type, **spec)


def _auto_class(task: str):
    import transformers

    return getattr(transformers, TASKS[task][0])


def build_from_config(config, task: str, seed: int = PRESET_SEED):
    """A freshly initialised model, identical for the same config and seed."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        module = _auto_class(task).from_config(config)
    return module.eval().float()


def load_model(model: str, task: str, config_overrides: dict | None = None, lazy: bool = False) -> ReferenceModel:
    """Load ``model`` (a preset name, or a ``save_pretrained`` directory) with ``task``'s head; ``lazy``:
    a checkpoint's weights only on first use (``ReferenceModel.torch_module``)."""
    check_task(task)
    if model in EXTRA_PRESETS:
        module_name, _, function = EXTRA_PRESETS[model].partition(":")
        return getattr(importlib.import_module(module_name), function)(task)
    if model in PRESETS:
        overrides = {"num_labels": 2} if task == "question-answering" else {}  # start and end logits
        overrides.update(config_overrides or {})
        config = preset_config(model, **overrides)
        _check_supported(config, model)
        check_task_for(config, task, model)
        return ReferenceModel(model, task, config, build_from_config(config, task))
    return _load_checkpoint(Path(model), task, lazy)


# Presets that need more than a config: "module:function" taking the task, returning a
# ReferenceModel (imported only when asked for).
EXTRA_PRESETS: dict[str, str] = {
    "tiny-deberta-v3-trained": "debertrt.core.trained:load",
    "tiny-deberta-v3-hot-ffn": "debertrt.core.models:load_hot_ffn",
}

# ``tiny-deberta-v3-hot-ffn``: tiny-deberta-v3 with one feed-forward block's input weights scaled
# up, so that block's activations exceed the fp16 range (65504) in known places, as mDeBERTa-v3's
# and v2-xlarge's do: the fp16 pass must keep them in fp32 islands.
HOT_FFN = {"module": "encoder.layer.1.intermediate.dense", "scale": 3e4}


def load_hot_ffn(task: str) -> ReferenceModel:
    import torch

    ref = load_model("tiny-deberta-v3", task)
    with torch.no_grad():
        ref.module.base_model.get_submodule(HOT_FFN["module"]).weight.mul_(HOT_FFN["scale"])
    ref.name = "tiny-deberta-v3-hot-ffn"
    return ref


def _load_checkpoint(path: Path, task: str, lazy: bool = False) -> ReferenceModel:
    if not path.is_dir():
        raise DebertrtError(
            f"checkpoint directory {str(path)!r} not found: pass a save_pretrained directory or a preset "
            f"({', '.join(list(PRESETS) + list(EXTRA_PRESETS))})")
    if not (path / "config.json").is_file():
        raise DebertrtError(f"{str(path)!r} has no config.json: pass a directory written by save_pretrained")
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except Exception as exc:  # transformers raises several types for a bad config
        raise DebertrtError(f"cannot read {path / 'config.json'}: {first_line(exc)}") from exc
    _check_supported(config, str(path))
    check_task_for(config, task, str(path))
    if not _weight_files(path):
        raise DebertrtError(f"{str(path)!r} has no weights (*.safetensors or *.bin): save the model with save_pretrained")
    module = None if lazy else _load_weights(path, task)
    tokenizer, source = _load_tokenizer(path)
    return ReferenceModel(str(path), task, config, module, tokenizer=tokenizer, tokenizer_source=source,
                          checkpoint=str(path))


def _weight_files(path: Path) -> list[Path]:
    return list(path.glob("*.safetensors")) + list(path.glob("*.bin"))


def _load_weights(path: Path, task: str):
    try:
        module = _auto_class(task).from_pretrained(path, local_files_only=True)
    except Exception as exc:
        raise DebertrtError(f"cannot load {task} weights from {str(path)!r}: {first_line(exc)}") from exc
    return module.eval().float()


def _load_tokenizer(path: Path) -> tuple[object | None, str | None]:
    """The checkpoint's tokenizer and where it came from: the fast one (from tokenizer.json, or
    converted from spm.model / vocab files), else the slow one, saying why."""
    names = ("tokenizer.json", "tokenizer_config.json", "spm.model", "vocab.json")
    found = [n for n in names if (path / n).is_file()]
    if not found:
        return None, None
    from transformers import AutoTokenizer

    if "spm.model" in found and "tokenizer.json" not in found:
        _check_sentencepiece_conversion(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=True)
        fast_error = None
    except Exception as exc:  # conversion to a fast tokenizer can fail in several ways
        tokenizer, fast_error = None, first_line(exc)
    if tokenizer is not None and getattr(tokenizer, "is_fast", False):
        vocabularies = [n for n in found if n in ("spm.model", "vocab.json")] or ["the slow tokenizer's files"]
        source = "tokenizer.json" if "tokenizer.json" in found else f"converted from {vocabularies[0]}"
        return tokenizer, source
    try:
        slow = tokenizer or AutoTokenizer.from_pretrained(path, local_files_only=True, use_fast=False)
    except Exception as exc:
        raise DebertrtError(f"cannot load the tokenizer in {str(path)!r}: {first_line(exc)}") from exc
    return slow, f"slow: {fast_error or 'no fast tokenizer for this checkpoint'}"


def _check_sentencepiece_conversion(path: Path) -> None:
    """transformers reads spm.model through its own protobuf gencode; an older protobuf runtime
    (tritonclient[grpc], which debertrt[serve] pulls in, pins protobuf<7) cannot load it, and the
    conversion then fails with an unrelated message. Say what is wrong instead."""
    from transformers.convert_slow_tokenizer import import_protobuf

    try:
        import_protobuf()
    except Exception as exc:  # google.protobuf.runtime_version.VersionError, ImportError
        raise DebertrtError(
            f"{path} has spm.model but no tokenizer.json, and transformers cannot read it with this protobuf "
            f"({first_line(exc)}): install protobuf>=7 (tritonclient[grpc], from debertrt[serve], pins protobuf<7: "
            f"serve from another environment), or save the tokenizer with tokenizer.json") from exc


def tasks_for(model_type: str) -> tuple[str, ...]:
    """The tasks transformers has a head for in a model family (v1 has no multiple choice)."""
    return tuple(t for t in TASKS if not (model_type == "deberta" and t in CHOICE_TASKS))


def check_task_for(config, task: str, where: str) -> None:
    """Refuse a task the model family has no head for (transformers has no DebertaForMultipleChoice)."""
    if task not in tasks_for(getattr(config, "model_type", None)):
        raise DebertrtError(f"{where}: DeBERTa v1 has no multiple-choice head in transformers (there is no "
                            f"DebertaForMultipleChoice); use a DeBERTa-v2/v3 or mDeBERTa checkpoint for --task {task}")


def _check_supported(config, where: str) -> None:
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise DebertrtError(
            f"{where}: model_type {model_type!r} is not DeBERTa; debertrt supports "
            f"{', '.join(SUPPORTED_MODEL_TYPES)} (DeBERTa v1, v2, v3 and mDeBERTa)")
    if getattr(config, "relative_attention", False):
        kinds = set(getattr(config, "pos_att_type", None) or [])
        unknown = kinds - {"c2p", "p2c"}
        if unknown:
            raise DebertrtError(f"{where}: pos_att_type {sorted(unknown)} is not supported; use c2p and/or p2c")
