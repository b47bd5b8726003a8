"""What the graph rewrites need to know of a model, read from its config (usually the export
manifest beside the ONNX): version, layers, positional terms, bucket table and scales."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from debertrt.core.artifacts import MANIFEST, read_json
from debertrt.core.errors import DebertrtError
from debertrt.core.models import has_absolute_positions, version_of


@dataclass(frozen=True)
class ModelFacts:
    """What the rewrite needs from the model config (from the export manifest)."""

    model_type: str
    num_layers: int
    pos_att_type: tuple
    position_buckets: int        # > 0: log buckets; 0: linear positions
    max_relative_positions: int  # resolved (< 1 in the config means max_position_embeddings)
    max_position_embeddings: int
    head_size: int
    absolute_positions: bool = True  # position_biased_input: then no sequence beyond max_position_embeddings
    num_heads: int = 0               # 0: not known (the fused rewrite needs it)
    vocab_size: int = 0              # 0: not known (token ids drawn below it in the rewrite's checks)

    def table_sequence(self, requested: int | None) -> int:
        """The longest sequence the rewrite's relative-position table covers: ``requested``, else
        ``max_position_embeddings``; refused beyond an absolute position table."""
        if requested is None:
            return self.max_position_embeddings
        if requested < 1:
            raise DebertrtError(f"--max-sequence must be >= 1, got {requested}")
        if self.absolute_positions and requested > self.max_position_embeddings:
            raise DebertrtError(f"--max-sequence {requested} exceeds the model's maximum {self.max_position_embeddings}: "
                                f"it has an absolute position table (position_biased_input); only models without one "
                                f"(DeBERTa-v3, mDeBERTa) take longer sequences")
        return requested

    @property
    def version(self) -> str:
        return version_of(self.model_type, self.position_buckets)

    @property
    def static_span(self) -> int | None:
        """The attention span of v2/v3 (static); None for v1, whose span is min(S, max_relative_positions)."""
        if self.model_type == "deberta":
            return None
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    def span_at(self, sequence: int) -> int:
        return self.static_span or min(sequence, self.max_relative_positions)

    @property
    def positional_rows(self) -> int:
        """2P: the rows of the fused op's positional inputs (v1: the full table, P = max_relative_positions,
        whose clamp selects what HF's slice to min(S, max_rel) selects at every S)."""
        return 2 * (self.static_span or self.max_relative_positions)

    @property
    def flash_scales(self) -> dict:
        """The fused op's factors as this version applies them: v1 divides q before every product,
        v2/v3 divide k·q and the positional terms."""
        inverse = 1.0 / self.scale
        if self.model_type == "deberta":
            return {"q_scale": inverse, "k_scale": 1.0, "pos_scale": 1.0}
        return {"q_scale": 1.0, "k_scale": inverse, "pos_scale": inverse}

    @property
    def scale(self) -> float:
        """HF's scaled_size_sqrt: sqrt(head_size · (1 + number of positional terms))."""
        return float(np.sqrt(np.float32(self.head_size * (1 + len(self.pos_att_type)))))

    @classmethod
    def from_config(cls, config) -> "ModelFacts":
        model_type = config.model_type
        if model_type not in ("deberta", "deberta-v2"):
            raise DebertrtError(f"model_type {model_type!r} is not DeBERTa: nothing to rewrite")
        if not getattr(config, "relative_attention", False):
            raise DebertrtError("the model has relative_attention off: it has no disentangled attention to rewrite")
        kinds = tuple(k for k in ("c2p", "p2c") if k in (getattr(config, "pos_att_type", None) or []))
        if not kinds:
            raise DebertrtError("the model's pos_att_type has neither c2p nor p2c: nothing to rewrite")
        smax = int(config.max_position_embeddings)
        max_rel = int(getattr(config, "max_relative_positions", -1))
        if max_rel < 1:
            max_rel = smax
        buckets = int(getattr(config, "position_buckets", -1)) if model_type == "deberta-v2" else -1
        heads = int(config.num_attention_heads)
        head_size = int(config.hidden_size) // heads
        if model_type == "deberta-v2":
            head_size = int(getattr(config, "attention_head_size", head_size))
        return cls(model_type, int(config.num_hidden_layers), kinds, max(buckets, 0), max_rel, smax, head_size,
                   has_absolute_positions(config), heads, int(getattr(config, "vocab_size", 0) or 0))

    @classmethod
    def from_manifest(cls, directory: str | os.PathLike) -> "ModelFacts":
        path = Path(directory) / MANIFEST
        if not path.is_file():
            raise DebertrtError(f"{path} not found: rewrite reads the model config from the export manifest; "
                                f"export with 'debertrt export' (or pass config= to rewrite())")
        try:
            entry = read_json(path)["stages"]["export"]
            config = dict(entry["config"])
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise DebertrtError(f"{path} has no export stage with a config: re-export the model") from exc
        return cls.from_config(config_from_dict(config))


def config_from_dict(config: dict):
    """A transformers config from a ``to_diff_dict`` (missing keys take transformers' defaults)."""
    from transformers import AutoConfig

    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise DebertrtError("the export manifest's config has no model_type: re-export the model")
    for key in ("transformers_version", "architectures"):
        config.pop(key, None)
    return AutoConfig.for_model(model_type, **config)
