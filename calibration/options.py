"""Options of the precision passes, importable without onnx or torch (the CLI reads their choices
and defaults while parsing)."""

from __future__ import annotations

from dataclasses import dataclass

from debertrt.core.errors import DebertrtError

FP16_MAX = 65504.0
DEFAULT_THRESHOLD = 0.5 * FP16_MAX

KEEP_FP32_OPS = {
    "LayerNormalization": "layer norm: statistics in fp32",
    "SkipLayerNormalization": "layer norm: statistics in fp32",
    "SimplifiedLayerNormalization": "layer norm: statistics in fp32",
    "Softmax": "softmax in fp32",
    "LogSoftmax": "softmax in fp32",
    "ReduceMean": "reduction in fp32",
    "ReduceSum": "reduction in fp32",
    "ReduceSumSquare": "reduction in fp32",
    "ReduceL2": "reduction in fp32",
    "ReduceLogSumExp": "reduction in fp32",
    "Pow": "power in fp32",
    "Sqrt": "square root in fp32",
    "Reciprocal": "reciprocal in fp32",
    "Exp": "exp in fp32",
    "Log": "log in fp32",
    "Range": "index arithmetic",
}


@dataclass(frozen=True)
class Fp16Options:
    threshold: float = DEFAULT_THRESHOLD   # max |x| above which a tensor stays fp32
    softmax_inputs_fp32: bool = True       # the attention-score sum (and a plugin node in it) in fp32
    plugin_fp16: bool = True               # DisentangledAttention with fp16 I/O when not in the score chain
    fp32_outputs: bool = True              # nodes producing graph outputs (the task head's last op) in fp32
    keep_ops: tuple[str, ...] = tuple(KEEP_FP32_OPS)
    check_batches: int = 2                 # batches on which fp16 is compared with fp32 after the pass

    def __post_init__(self):
        if not 0 < self.threshold <= FP16_MAX:
            raise DebertrtError(f"fp16 threshold {self.threshold} must be in (0, {FP16_MAX:g}]")


METHODS = ("max", "percentile", "entropy", "mse")


@dataclass(frozen=True)
class Int8Options:
    method: str = "max"
    max_accuracy_loss: float | None = 0.01   # relative; None: no fallback
    percentile: float = 99.99                # for method="percentile"
    num_bins: int = 2048                     # histogram bins (percentile, mse)
    quantize_bmm: bool = False               # also the activation x activation MatMuls
    granularity: str = "layer"               # fallback unit: "layer" (MatMul group) or "node"
    dedicated_qdq: bool = True               # one Q/DQ pair per consuming MatMul (False: shared)

    def __post_init__(self):
        if self.method not in METHODS:
            raise DebertrtError(f"unknown calibration method {self.method!r}: choose one of {', '.join(METHODS)}")
        if self.max_accuracy_loss is not None and not 0 <= self.max_accuracy_loss < 1:
            raise DebertrtError(f"--max-accuracy-loss {self.max_accuracy_loss} must be in [0, 1) (relative)")
        if not 50 < self.percentile <= 100:
            raise DebertrtError(f"percentile {self.percentile} must be in (50, 100]")
        if self.granularity not in ("layer", "node"):
            raise DebertrtError(f"fallback granularity {self.granularity!r}: use 'layer' or 'node'")
