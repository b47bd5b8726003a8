"""The whole chain in one call: export -> rewrite -> precision -> engine -> parity.

Every stage's artifact and manifest entry stays in the output directory; this module only
decides which stages run on which artifacts and in what order.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .compare import TOLERANCES
from .errors import DebertrtError
from .export import ExportOptions

PRECISIONS = tuple(TOLERANCES)  # fp32, fp16, int8
BACKEND_CHOICES = ("auto", "tensorrt", "tensorrt-rtx", "none")


@dataclass(frozen=True)
class BuildOptions:
    precisions: tuple[str, ...] = PRECISIONS
    backend: str = "auto"             # auto: TensorRT if importable, else TensorRT-RTX if installed, else none
    profiles: tuple = ()              # engine.Profile objects; empty: the engine module's default
    export: ExportOptions = field(default_factory=ExportOptions)
    calibration_data: str | os.PathLike | None = None
    method: str = "max"
    max_accuracy_loss: float | None = 0.01
    plugin_library: str | os.PathLike | None = None

    def __post_init__(self):
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown or not self.precisions:
            raise DebertrtError(f"precision {sorted(unknown) or '(none)'}: choose from {', '.join(PRECISIONS)}")
        if self.backend not in BACKEND_CHOICES:
            raise DebertrtError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")


def resolve_backend(backend: str) -> str:
    """``auto`` -> the first engine builder this machine has: TensorRT, then TensorRT-RTX, else none."""
    if backend != "auto":
        return backend
    from .engine import flavour

    for name in ("tensorrt", "tensorrt-rtx"):
        if flavour(name).available():
            return name
    return "none"


@dataclass
class BuildResult:
    artifacts: list[Path]
    notes: list[str]
    parity: dict | None = None


def build(ref, out_dir: str | os.PathLike, options: BuildOptions, parity_dataset, report_name: str = "parity",
          log=print) -> BuildResult:
    """Run every stage for ``ref`` into ``out_dir``; return the artifacts and the parity result."""
    from .export import export
    from .parity import parity
    from .rewrite import rewrite

    out_dir = Path(out_dir)
    backend = resolve_backend(options.backend)
    steps = 4 + (backend != "none")
    notes: list[str] = []

    log(f"[1/{steps}] export {ref.name} ({ref.task}) -> {out_dir}")
    model = export(ref, out_dir, options.export)
    log(f"[2/{steps}] rewrite -> plugin graph")
    plugin_model = rewrite(model)

    log(f"[3/{steps}] precision: {', '.join(options.precisions)}")
    graphs = {"fp32": (model, plugin_model)}
    calibration = _calibration_dataset(ref, options)
    for precision in options.precisions:
        if precision == "fp32":
            continue
        graphs[precision] = tuple(_convert(precision, source, ref, calibration, parity_dataset, options)
                                  for source in (model, plugin_model))

    engines: list[Path] = []
    if backend != "none":
        log(f"[4/{steps}] engines ({backend})")
        engines, engine_notes = _build_engines(graphs, out_dir, backend, options)
        notes += engine_notes
    else:
        notes.append("no engine built: neither TensorRT nor TensorRT-RTX is installed "
                     "(pip install -e '.[rtx]' for TensorRT-RTX ahead-of-time builds)")

    log(f"[{steps}/{steps}] parity against PyTorch fp32")
    onnx_artifacts = [path for pair in graphs.values() for path in pair]
    artifacts = onnx_artifacts + engines
    result = parity(ref, artifacts, parity_dataset, out_dir / report_name)
    return BuildResult(artifacts, notes, result)


def _calibration_dataset(ref, options: BuildOptions):
    if not {"fp16", "int8"} & set(options.precisions):
        return None
    from debertrt.calibration.data import calibration_dataset

    return calibration_dataset(ref, options.calibration_data)


def _convert(precision: str, source: Path, ref, calibration, evaluation, options: BuildOptions) -> Path:
    if precision == "fp16":
        from debertrt.calibration.fp16 import to_fp16

        return to_fp16(source, dataset=calibration, ref=ref)
    from debertrt.calibration.int8 import Int8Options, quantize_int8

    int8_options = Int8Options(method=options.method, max_accuracy_loss=options.max_accuracy_loss)
    return quantize_int8(source, dataset=calibration, ref=ref, eval_dataset=ref.eval_dataset or evaluation,
                         options=int8_options)


def _build_engines(graphs: dict, out_dir: Path, backend: str, options: BuildOptions) -> tuple[list[Path], list[str]]:
    """TensorRT takes the plugin graphs; TensorRT-RTX, which cannot take plugin layers, the plugin-free ones."""
    from .engine import EngineOptions, build_engine

    engine_options = EngineOptions(backend=backend, profiles=tuple(options.profiles),
                                   plugin_library=options.plugin_library)
    plans, notes = [], []
    for precision, (plain, with_plugin) in graphs.items():
        if backend == "tensorrt-rtx":
            plans.append(build_engine(plain, out_dir, engine_options, name=f"engine.rtx.{precision}"))
        else:
            plans.append(build_engine(with_plugin, out_dir, engine_options, name=f"engine.{precision}"))
    if backend == "tensorrt-rtx":
        notes.append("TensorRT-RTX engines are built from the plugin-free graphs (it cannot take plugin layers)")
    return plans, notes
