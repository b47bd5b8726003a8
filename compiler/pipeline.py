"""The whole chain in one call: export -> rewrite -> precision -> engine -> parity.

Every stage's artifact and manifest entry stays in the output directory; this module only
decides which stages run on which artifacts and in what order, and which examples each one
sees: int8 calibration, the int8 fallback's scoring and parity use disjoint sets
(``core.data.datasets_for``), so no artifact is judged on the examples it was tuned on.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from debertrt.core.artifacts import MANIFEST, StageResult, read_json, record_stage
from debertrt.core.compare import TOLERANCES
from debertrt.core.errors import DebertrtError
from debertrt.core.log import logger
from debertrt.core.child import run_in_child
from debertrt.core.resources import MIB, measured

from .export import ExportOptions

PRECISIONS = tuple(TOLERANCES)  # fp32, fp16, int8
BACKEND_CHOICES = ("auto", "tensorrt", "tensorrt-rtx", "none")
# what the rewrite folds into one plugin node per layer: the c2p/p2c gathers (model.plugin.onnx) or the
# whole attention (model.flash.onnx)
FUSE_CHOICES = ("gathers", "attention")
# Weights above which each stage runs in its own child process (``core.child``): a full-size model's
# stages would otherwise each start from what the previous ones left in the heap.
ISOLATE_ABOVE = 256 * MIB


@dataclass(frozen=True)
class BuildOptions:
    precisions: tuple[str, ...] = PRECISIONS
    backend: str = "auto"             # auto: TensorRT if importable, else TensorRT-RTX if installed, else none
    profiles: tuple = ()              # runtime.profiles.Profile objects; empty: the engine stage's default
    export: ExportOptions = field(default_factory=ExportOptions)
    method: str = "max"
    max_accuracy_loss: float | None = 0.01
    plugin_library: str | os.PathLike | None = None
    fuse: str = "gathers"
    isolate: bool | None = None       # each stage in a child process; None: when the weights exceed ISOLATE_ABOVE

    def __post_init__(self):
        unknown = set(self.precisions) - set(PRECISIONS)
        if unknown or not self.precisions:
            raise DebertrtError(f"precision {sorted(unknown) or '(none)'}: choose from {', '.join(PRECISIONS)}")
        if self.backend not in BACKEND_CHOICES:
            raise DebertrtError(f"unknown backend {self.backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
        if self.fuse not in FUSE_CHOICES:
            raise DebertrtError(f"--fuse {self.fuse!r}: choose one of {', '.join(FUSE_CHOICES)}")


def resolve_backend(backend: str) -> str:
    """``auto`` -> the first engine builder this machine has: TensorRT, then TensorRT-RTX, else none."""
    if backend != "auto":
        return backend
    from debertrt.runtime.tensorrt import flavour

    for name in ("tensorrt", "tensorrt-rtx"):
        if flavour(name).available():
            return name
    return "none"


@dataclass
class BuildResult:
    artifacts: list[Path]
    notes: list[str]
    parity: dict | None = None
    costs: dict = field(default_factory=dict)  # stage -> manifest "resources" (wall, CPU, peak RSS) of this build


def build(ref, out_dir: str | os.PathLike, options: BuildOptions, datasets: dict,
          report_name: str = "parity", release_torch: bool = False) -> BuildResult:
    """Run every stage for ``ref`` into ``out_dir``; return the artifacts and the parity result.

    ``datasets``: purpose ("calibration", "fallback", "parity") -> ``core.data.Dataset``, disjoint;
    calibration and fallback are needed only for fp16/int8. The PyTorch outputs on the parity set
    are computed once, right after the export, and kept in ``reference.npz``; ``release_torch``
    then drops ``ref.module`` so that the ONNX stages do not hold a second copy of the weights."""
    from debertrt.core.data import check_sequence

    out_dir = Path(out_dir)
    before = _stage_costs(out_dir)
    longest = longest_sequence(ref, options, datasets)
    if longest:
        check_sequence(ref, longest)  # a model with an absolute position table refuses before any work
    backend = resolve_backend(options.backend)
    steps = 4 + (backend != "none")
    notes: list[str] = []

    isolate = options.isolate if options.isolate is not None else ref.weight_bytes() > ISOLATE_ABOVE
    run = run_in_child if isolate else _in_process

    logger.info("[1/%d] export %s (%s) -> %s", steps, ref.name, ref.task, out_dir)
    model, reference = run("export", _export_and_reference, ref, out_dir, options.export, datasets["parity"])
    if release_torch or isolate:  # the later stages need only what describes the model, not its weights
        from debertrt.core.resources import release_memory

        if release_torch:
            ref.module = None
        ref = dataclasses.replace(ref, module=None)
        release_memory()
    logger.info("[2/%d] rewrite (--fuse %s) -> plugin graph", steps, options.fuse)
    plugin_model = run("rewrite", _rewrite, model, longest, options.fuse)

    logger.info("[3/%d] precision: %s", steps, ", ".join(options.precisions))
    graphs = {"fp32": (model, plugin_model)}
    for precision in options.precisions:
        if precision != "fp32":
            plain = run(precision, _convert, precision, model, ref, datasets, options)
            # the plugin graph's int8 starts from the plain graph's decision (same layers, same groups)
            sibling = plain.summary.get("float_group_nodes") if precision == "int8" else None
            graphs[precision] = (plain.path,
                                 run(precision, _convert, precision, plugin_model, ref, datasets, options, sibling).path)

    engines: list[Path] = []
    if backend != "none":
        logger.info("[4/%d] engines (%s)", steps, backend)
        engines, engine_notes = _build_engines(graphs, out_dir, backend, options)
        notes += engine_notes
    elif options.backend == "none":
        notes.append("no engine built: --backend none")
    else:
        notes.append("no engine built: neither TensorRT nor TensorRT-RTX is installed "
                     "(pip install -e '.[rtx]' for TensorRT-RTX ahead-of-time builds)")

    logger.info("[%d/%d] parity against PyTorch fp32", steps, steps)
    artifacts = [path for pair in graphs.values() for path in pair] + engines
    result = run("parity", _parity, ref, artifacts, datasets["parity"], out_dir / report_name, notes, reference)
    costs = {stage: cost for stage, cost in _stage_costs(out_dir).items() if cost != before.get(stage)}
    return BuildResult(artifacts, notes, result, costs)


def _in_process(what: str, function, *args, **kwargs):
    """``core.child.run_in_child``'s stand-in for a small model: the stage in this process."""
    return function(*args, **kwargs)


def _export_and_reference(ref, out_dir: Path, options: ExportOptions, dataset) -> tuple[Path, Path]:
    """The two stages that need the PyTorch module: in one process, so its weights load once."""
    from .export import export

    return export(ref, out_dir, options), _reference(ref, dataset, out_dir)


def _rewrite(model: Path, longest: int | None, fuse: str) -> Path:
    from .rewrite import rewrite

    return rewrite(model, max_sequence=longest, fuse=fuse).path


@measured
def _parity(ref, artifacts: list[Path], dataset, report: Path, notes: list[str], reference: Path) -> dict:
    from .parity import load_reference, parity

    result = parity(ref, artifacts, dataset, report, notes=notes, reference=load_reference(reference))
    record_stage(report.parent, "parity", inputs={"artifacts": [p.name for p in artifacts], "reference": reference.name},
                 options={"data": dataset.describe()},
                 outputs={"report": report.with_suffix(".json")}, extra={"verdict": result["verdict"]})
    return result


@measured
def _reference(ref, dataset, out_dir: Path) -> Path:
    """The PyTorch fp32 outputs on the parity set, once per build, saved beside the artifacts."""
    from .parity import reference_outputs, save_reference

    path = save_reference(reference_outputs(ref, dataset), out_dir / "reference.npz")
    record_stage(out_dir, "reference", inputs={"model": ref.name, "task": ref.task},
                 options={"data": dataset.describe()}, outputs={"outputs": path})
    return path


def _stage_costs(out_dir: Path) -> dict:
    try:
        stages = read_json(out_dir / MANIFEST)["stages"]
    except (OSError, ValueError, KeyError):
        return {}
    return {name: entry["resources"] for name, entry in stages.items() if "resources" in entry}


def cost_lines(costs: dict) -> list[str]:
    """The cost of each stage as aligned lines, for the build's summary."""
    lines = [f"  {'stage':<28} {'wall':>9} {'CPU':>9} {'peak RSS':>10}"]
    for stage, c in costs.items():
        lines.append(f"  {stage:<28} {c['wall_s']:>7.1f} s {c['cpu_s']:>7.1f} s {c['peak_rss_mib'] / 1024:>6.2f} GiB")
    return lines


def longest_sequence(ref, options: BuildOptions, datasets: dict) -> int | None:
    """The longest sequence the artifacts must take, when it exceeds ``max_position_embeddings`` (the
    rewrite's default table): the largest profile or data length. None: the default covers it."""
    lengths = [p.sequence[2] for p in options.profiles]
    lengths += [b["input_ids"].shape[-1] for d in datasets.values() for b in d.batches]
    longest = max(lengths, default=0)
    return longest if longest > int(ref.config.max_position_embeddings) else None


def _convert(precision: str, source: Path, ref, datasets: dict, options: BuildOptions,
             sibling_float_groups: dict[str, list[str]] | None = None) -> StageResult:
    if precision == "fp16":
        from debertrt.calibration.fp16 import to_fp16

        return to_fp16(source, dataset=datasets["calibration"], ref=ref)
    from debertrt.calibration.int8 import Int8Options, quantize_int8

    int8_options = Int8Options(method=options.method, max_accuracy_loss=options.max_accuracy_loss)
    return quantize_int8(source, dataset=datasets["calibration"], ref=ref, fallback_dataset=datasets["fallback"],
                         options=int8_options, sibling_float_groups=sibling_float_groups)


def _build_engines(graphs: dict, out_dir: Path, backend: str, options: BuildOptions) -> tuple[list[Path], list[str]]:
    """TensorRT takes the plugin graphs (the plugin-free one of a precision whose plugin nodes it cannot
    take, e.g. fused fp32 attention); TensorRT-RTX, which cannot take plugin layers, the plugin-free ones."""
    from .engine import EngineOptions, build_engine, inspect_onnx, plugin_dtype_problem

    engine_options = EngineOptions(backend=backend, profiles=tuple(options.profiles),
                                   plugin_library=options.plugin_library)
    plans, notes = [], []
    for precision, (plain, with_plugin) in graphs.items():
        if backend == "tensorrt-rtx":
            plans.append(build_engine(plain, out_dir, engine_options, name=f"engine.rtx.{precision}"))
            continue
        problem = plugin_dtype_problem(with_plugin, inspect_onnx(with_plugin))
        if problem:
            notes.append(f"engine.{precision} is built from {plain.name}: {problem}")
        plans.append(build_engine(plain if problem else with_plugin, out_dir, engine_options,
                                  name=f"engine.{precision}"))
    if backend == "tensorrt-rtx":
        skipped = ", ".join(with_plugin.name for _, with_plugin in graphs.values())
        notes.append(f"TensorRT-RTX engines are built from the plugin-free graphs (it cannot take plugin layers): "
                     f"no engine from {skipped}")
    return plans, notes
