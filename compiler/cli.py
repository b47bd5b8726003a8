"""The ``debertrt`` command: thin argument groups over the library's stages.

Flags shared by several subcommands are declared once (``_model_args``, ``_data_args``, ...),
each with one default. Bad flags are rejected while parsing, before any work; a
``DebertrtError`` becomes one line on stderr and exit code 1. ``-v``/``-q`` set the one
logger's level (``core.log``). Parsing imports neither torch, onnx nor TensorRT.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from debertrt.core import log
from debertrt.core.data import DEFAULT_BATCH_SIZE, DEFAULT_BATCHES, DEFAULT_RANDOM_LENGTH
from debertrt.core.errors import DebertrtError

DEFAULT_MODEL = "tiny-deberta-v3"
DEFAULT_TASK = "sequence-classification"
DEFAULT_OUT = "debertrt-out"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ---------------------------------------------------------------------------- argument types


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (relative), got {value}")
    return value


def _fp16_threshold(text: str) -> float:
    from debertrt.calibration.options import FP16_MAX

    value = float(text)
    if not 0 < value <= FP16_MAX:
        raise argparse.ArgumentTypeError(f"must be in (0, {FP16_MAX:g}], got {value}")
    return value


def _profile(text: str):
    from debertrt.runtime.profiles import Profile

    try:
        return Profile.parse(text)
    except DebertrtError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# ---------------------------------------------------------------------------- shared argument groups


def _model_args(p, required: bool = True) -> None:
    from debertrt.core.models import EXTRA_PRESETS, PRESETS, TASKS

    g = p.add_argument_group("model")
    g.add_argument("--model", required=required, default=None if required else DEFAULT_MODEL,
                   help=f"a save_pretrained directory, or a preset: {', '.join(list(PRESETS) + list(EXTRA_PRESETS))}"
                        + ("" if required else f" (default {DEFAULT_MODEL})"))
    g.add_argument("--task", required=required, default=None if required else DEFAULT_TASK,
                   help=f"one of: {', '.join(TASKS)}" + ("" if required else f" (default {DEFAULT_TASK})"))


def _data_args(p) -> None:
    g = p.add_argument_group("data")
    g.add_argument("--data", type=Path, help="a .txt/.jsonl/.csv file tokenized with the checkpoint's tokenizer "
                                             "(default: the preset's own held-out sets, else random token batches "
                                             "with padding); split into disjoint sets where a run needs several")
    g.add_argument("--batches", type=_positive, default=DEFAULT_BATCHES,
                   help=f"random batches per set (default {DEFAULT_BATCHES})")
    g.add_argument("--batch-size", type=_positive, default=DEFAULT_BATCH_SIZE,
                   help=f"examples per batch (default {DEFAULT_BATCH_SIZE})")
    g.add_argument("--max-length", type=_positive, default=None,
                   help=f"longest sequence (default: {DEFAULT_RANDOM_LENGTH} for random data; for files the "
                        f"model's maximum, or the engine profile's with build; none for a model of any length)")
    cut = g.add_mutually_exclusive_group()
    cut.add_argument("--truncate", action="store_true",
                     help="cut text examples longer than --max-length (counted in the report; default: refuse them)")
    cut.add_argument("--stride", type=_non_negative, default=None, metavar="N",
                     help="token-classification, question-answering: split long text examples into windows of "
                          "--max-length tokens sharing N tokens, answers merged back per example")


def _export_args(p) -> None:
    from .export import DEFAULT_OPSET, EXPORTERS

    g = p.add_argument_group("export")
    g.add_argument("--exporter", choices=EXPORTERS, default="dynamo", help="torch.onnx exporter (default dynamo)")
    g.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    g.add_argument("--external-data", action="store_true", default=None,
                   help="store weights beside the graph (automatic over 2 GB)")


def _int8_args(p) -> None:
    from debertrt.calibration.options import METHODS

    g = p.add_argument_group("int8")
    g.add_argument("--method", choices=METHODS, default="max", help="int8 range calibration (default max)")
    g.add_argument("--max-accuracy-loss", type=_fraction, default=0.01,
                   help="int8: largest task-metric loss relative to fp32 before layers fall back to float "
                        "(default 0.01)")


def _engine_args(p, backends, default_backend: str) -> None:
    g = p.add_argument_group("engine")
    g.add_argument("--backend", choices=backends, default=default_backend,
                   help=f"engine builder (default {default_backend}; tensorrt-rtx builds ahead of time without a "
                        f"GPU and takes no plugin layers)")
    g.add_argument("--profile", type=_profile, action="append", default=None,
                   help="optimization profile, e.g. batch=1:4:16,sequence=1:128:512 (multiple choice: also "
                        "choices=1:4:8) (repeat for several; default batch=1:4:16,sequence=1:128:512 clipped to the "
                        "model's maximum)")
    g.add_argument("--plugin-library", type=Path, default=None,
                   help="libdebertrt_plugins.so for plugin graphs (default: $DEBERTRT_PLUGIN_LIBRARY or build/plugins)")


# ---------------------------------------------------------------------------- the parser


def build_parser() -> argparse.ArgumentParser:
    from debertrt.runtime.tensorrt import BACKENDS

    from .engine import DEFAULT_OPTIMIZATION_LEVEL, RTX_COMPUTE_CAPABILITIES
    from .pipeline import BACKEND_CHOICES, PRECISIONS

    parser = _Parser(prog="debertrt", description="DeBERTa from PyTorch to TensorRT engines, with parity reports.")
    parser.add_argument("-v", "--verbose", action="store_const", const=1, default=0, dest="verbosity",
                        help="more detail (builder warnings, notes)")
    parser.add_argument("-q", "--quiet", action="store_const", const=-1, dest="verbosity",
                        help="only warnings and results (no progress)")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("export", help="PyTorch -> DIR/model.onnx (dynamic batch and sequence)")
    _model_args(p)
    _export_args(p)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("rewrite", help="DIR/model.onnx -> DIR/model.plugin.onnx (one DisentangledAttention node per layer)")
    p.add_argument("onnx", type=Path, help="a model.onnx written by 'debertrt export' (its manifest.json gives the config)")
    p.add_argument("--out", type=Path, default=None, help="output path (default: DIR/model.plugin.onnx)")
    p.add_argument("--max-sequence", type=_positive, default=None, metavar="N",
                   help="longest sequence the plugin graph takes: sizes its relative-position table (default "
                        "max_position_embeddings; beyond it only for models without absolute positions)")
    p.set_defaults(run=_cmd_rewrite)

    p = sub.add_parser("calibrate", help="DIR/model.onnx -> DIR/model.fp16.onnx or DIR/model.int8.onnx "
                                         "(precision lives in the ONNX: fp32 islands / explicit Q/DQ)")
    p.add_argument("onnx", type=Path, help="the fp32 model.onnx (or model.plugin.onnx) of 'debertrt export' / 'rewrite'")
    p.add_argument("--precision", choices=("fp16", "int8"), required=True)
    p.add_argument("--model", default=None, help="preset or checkpoint directory (default: DIR/manifest.json's export)")
    p.add_argument("--task", default=None, help="the model's task (default: DIR/manifest.json's export)")
    _data_args(p)
    p.add_argument("--fallback-data", type=Path, default=None,
                   help="int8: examples the accuracy-driven fallback scores (with labels: accuracy, else agreement "
                        "with fp32) (default: a disjoint part of --data, or the preset's / random held-out set)")
    _int8_args(p)
    p.add_argument("--no-fallback", action="store_true", help="int8: quantize every weight MatMul, leave none in float")
    from debertrt.calibration.options import DEFAULT_THRESHOLD, FP16_MAX

    p.add_argument("--fp16-threshold", type=_fp16_threshold, default=DEFAULT_THRESHOLD,
                   help=f"fp16: activations above this |x| stay fp32 (default {DEFAULT_THRESHOLD:g} = half of "
                        f"{FP16_MAX:g})")
    p.add_argument("--out", type=Path, default=None,
                   help="output path (default: DIR/model.fp16.onnx or DIR/model.int8.onnx)")
    p.set_defaults(run=_cmd_calibrate)

    p = sub.add_parser("engine", help="an ONNX artifact -> DIR/engine.plan + engine.json (TensorRT or TensorRT-RTX)")
    p.add_argument("onnx", type=Path, help="model.onnx, model.plugin.onnx, model.fp16.onnx or model.int8.onnx")
    _engine_args(p, BACKENDS, "tensorrt")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the ONNX file's)")
    p.add_argument("--name", default="engine", help="writes NAME.plan and NAME.json (default engine)")
    p.add_argument("--optimization-level", type=int, choices=range(6), default=DEFAULT_OPTIMIZATION_LEVEL,
                   metavar="0-5", help=f"builder optimization level (default {DEFAULT_OPTIMIZATION_LEVEL})")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, read and updated (TensorRT)")
    p.add_argument("--workspace", type=_positive, default=None, metavar="MIB", help="workspace memory limit in MiB")
    p.add_argument("--compute-capability", action="append", default=None,
                   choices=RTX_COMPUTE_CAPABILITIES, help="TensorRT-RTX target (repeat; default: its portable set)")
    p.set_defaults(run=_cmd_engine)

    p = sub.add_parser("parity", help="check artifacts against the PyTorch fp32 reference")
    _model_args(p)
    p.add_argument("--artifact", type=Path, action="append", required=True,
                   help="an artifact to check (repeat for several)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="tolerance class (default: read from each artifact)")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="report path stem: writes OUT.json, OUT.md, OUT_errors.png")
    p.set_defaults(run=_cmd_parity)

    p = sub.add_parser("build", help="export -> rewrite -> fp16/int8 -> engines -> parity into one directory "
                                     f"(no arguments: {DEFAULT_MODEL})")
    _model_args(p, required=False)
    _export_args(p)
    _data_args(p)
    p.add_argument("--precision", action="append", choices=PRECISIONS, default=None,
                   help="artifacts to produce (repeat; default fp32, fp16 and int8)")
    _engine_args(p, BACKEND_CHOICES, "auto")
    _int8_args(p)
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output directory (default ./{DEFAULT_OUT})")
    p.set_defaults(run=_cmd_build)

    p = sub.add_parser("export-triton", help="a built engine -> a Triton model repository")
    p.add_argument("--engine", type=Path, required=True, help="engine directory, NAME.plan or NAME.json")
    p.add_argument("--out", type=Path, required=True, help="model repository directory (created or added to)")
    p.add_argument("--name", default=None, help="Triton model name (default <model>-<task>)")
    p.add_argument("--plugin-library", type=Path, default=None,
                   help="self-registering plugin library for plugin engines (default libdebertrt_plugins_static.so "
                        "beside the one the engine was built with)")
    p.add_argument("--instances", type=_positive, default=1, help="model instances per GPU (default 1)")
    p.set_defaults(run=_cmd_export_triton)
    return parser


# ---------------------------------------------------------------------------- commands


def _text_options(args):
    from debertrt.core.data import TextOptions

    return TextOptions(truncate=args.truncate, stride=args.stride)


def _datasets(args, ref, purposes, profiles=()):
    """The example sets of a run; text examples are held to --max-length, else to the longest
    sequence of the engine profiles (random data is drawn at --max-length, else its default)."""
    from debertrt.core.data import datasets_for

    max_length = args.max_length
    if args.data is not None and max_length is None and profiles:
        max_length = max(p.sequence[2] for p in profiles)
    return datasets_for(ref, purposes, args.data, batches=args.batches, batch_size=args.batch_size,
                        max_length=max_length, text=_text_options(args))


def _export_options(args):
    from .export import ExportOptions

    return ExportOptions(exporter=args.exporter, opset=args.opset, external_data=args.external_data)


def _cmd_export(args) -> int:
    from debertrt.core.models import load_model

    from .export import export

    path = export(load_model(args.model, args.task), args.out, _export_options(args))
    print(f"wrote {path}")
    return 0


def _cmd_rewrite(args) -> int:
    from .rewrite import rewrite

    result = rewrite(args.onnx, args.out, max_sequence=args.max_sequence)
    print(f"wrote {result.path} (report {result.report.name})")
    print(result.summary["text"])
    return 0


def _manifest_model(onnx_path: Path) -> tuple[str | None, str | None]:
    from debertrt.core.artifacts import MANIFEST, read_json

    manifest = onnx_path.parent / MANIFEST
    if not manifest.is_file():
        return None, None
    try:
        inputs = read_json(manifest)["stages"]["export"]["inputs"]
        return inputs.get("model"), inputs.get("task")
    except (KeyError, TypeError, ValueError):
        return None, None


def _cmd_calibrate(args) -> int:
    from debertrt.core.data import text_dataset
    from debertrt.core.models import load_model

    if not args.onnx.is_file():
        raise DebertrtError(f"ONNX file {str(args.onnx)!r} not found")
    model, task = _manifest_model(args.onnx)
    model, task = args.model or model, args.task or task
    if bool(model) != bool(task):
        raise DebertrtError("give both --model and --task (the manifest beside the ONNX names only one)")
    ref = load_model(model, task) if model else None
    if (args.data is not None or args.fallback_data is not None) and ref is None:
        raise DebertrtError("text data needs the model's tokenizer: pass --model and --task")
    purposes = ["calibration"] if args.precision == "fp16" or args.fallback_data else ["calibration", "fallback"]
    data = _datasets(args, ref, purposes) if ref is not None else {}
    if args.fallback_data is not None:
        data["fallback"] = text_dataset(ref, args.fallback_data, batch_size=args.batch_size,
                                        max_length=args.max_length, text=_text_options(args))
    if args.precision == "fp16":
        from debertrt.calibration.fp16 import to_fp16
        from debertrt.calibration.options import Fp16Options

        result = to_fp16(args.onnx, args.out, data.get("calibration"), ref=ref,
                         options=Fp16Options(threshold=args.fp16_threshold))
        s = result.summary
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["fp32_by_kind"].items()))
        print(f"wrote {result.path}: {s['nodes_fp16']} nodes fp16, {s['nodes_fp32']} fp32 ({kinds}), "
              f"{s['casts_inserted']} casts (report {result.report.name})")
        for island in s["above_range"]:
            print(f"  beyond the fp16 range threshold, kept fp32: {island['where']} ({island['nodes']} nodes, "
                  f"|x| up to {island['max_abs']:.4g})")
        return 0

    from debertrt.calibration.int8 import quantize_int8
    from debertrt.calibration.options import Int8Options

    options = Int8Options(method=args.method, max_accuracy_loss=None if args.no_fallback else args.max_accuracy_loss)
    result = quantize_int8(args.onnx, args.out, data.get("calibration"), ref=ref, task=task,
                           fallback_dataset=data.get("fallback"), options=options)
    s = result.summary
    print(f"wrote {result.path}: {s['quantized_matmuls']}/{s['candidate_matmuls']} MatMul/Gemm in int8; {s['metric']} "
          f"fp32 {s['fp32']:.4f} -> int8 {s['int8']:.4f}"
          + (f" ({'within' if s['within_budget'] else 'NOT within'} budget)" if not args.no_fallback else "")
          + (f"; left in float: {', '.join(s['float_groups'])}" if s["float_groups"] else "")
          + f" (report {result.report.name})")
    return 0


def _exit_code(result: dict) -> int:
    """0 when the verdict is passed; 1 when an artifact failed or nothing could be judged."""
    return 0 if result["verdict"] == "passed" else 1


def _print_summary(result: dict, report: Path) -> None:
    from .parity_report import VERDICT_TEXT, overall_line

    for e in result["artifacts"]:
        name = Path(e["path"]).name
        verdict = VERDICT_TEXT[e["verdict"]]
        if e["status"] != "ran":
            print(f"  {name:<24} {e['precision']:<5} not run: {e['reason']}  {verdict}")
            continue
        worst = max(m["max_abs"] for m in e["outputs"].values())
        headline = next(iter(e["task"]["agreement"].items()), None)
        agree = f"  {headline[0]} agreement {headline[1]:.2%}" if headline else ""
        failed = [f"{c['criterion']} ({c['output']})" for c in e["criteria"] if not c["passed"]]
        print(f"  {name:<24} {e['precision']:<5} max abs {worst:.3g}{agree}  {verdict}"
              + (f": {'; '.join(failed)}" if failed else ""))
    print(f"report: {report.with_suffix('.md')} ({overall_line(result)})")


def _cmd_parity(args) -> int:
    from debertrt.core.models import load_model

    from .parity import parity

    ref = load_model(args.model, args.task)
    result = parity(ref, args.artifact, _datasets(args, ref, ["parity"])["parity"], args.out,
                    precisions=[args.precision] * len(args.artifact))
    _print_summary(result, args.out)
    return _exit_code(result)


def _cmd_build(args) -> int:
    from debertrt.core.models import load_model

    from .pipeline import PRECISIONS, BuildOptions, build

    options = BuildOptions(precisions=tuple(args.precision or PRECISIONS), backend=args.backend,
                           profiles=tuple(args.profile or ()), export=_export_options(args),
                           method=args.method, max_accuracy_loss=args.max_accuracy_loss,
                           plugin_library=args.plugin_library)
    ref = load_model(args.model, args.task)
    purposes = ["parity"] if set(options.precisions) == {"fp32"} else ["calibration", "fallback", "parity"]
    result = build(ref, args.out, options, _datasets(args, ref, purposes, options.profiles))
    for note in result.notes:
        print(f"note: {note}")
    _print_summary(result.parity, args.out / "parity")
    return _exit_code(result.parity)


def _cmd_engine(args) -> int:
    from .engine import EngineOptions, build_engine

    options = EngineOptions(backend=args.backend, profiles=tuple(args.profile or ()),
                            optimization_level=args.optimization_level, timing_cache=args.timing_cache,
                            plugin_library=args.plugin_library, workspace_mib=args.workspace,
                            compute_capabilities=tuple(args.compute_capability or ()),
                            verbose=args.verbosity > 0)
    plan = build_engine(args.onnx, args.out or args.onnx.parent, options, name=args.name)
    print(f"wrote {plan} and {plan.with_suffix('.json').name}")
    return 0


def _cmd_export_triton(args) -> int:
    from .triton import export_triton

    model_dir = export_triton(args.engine, args.out, name=args.name, plugin_library=args.plugin_library,
                              instances=args.instances)
    print(f"wrote {model_dir} (see {args.out / 'README.md'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    log.configure(args.verbosity)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except DebertrtError as exc:
        print(f"debertrt: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("debertrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
