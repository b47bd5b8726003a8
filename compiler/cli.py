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

from . import commands

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


def _fuse_arg(p) -> None:
    from .pipeline import FUSE_CHOICES

    p.add_argument("--fuse", choices=FUSE_CHOICES, default="gathers",
                   help="what one plugin node per layer replaces: the c2p/p2c gathers (DisentangledAttention, "
                        "model.plugin.onnx; default) or the whole attention (DisentangledFlashAttention, no S x S "
                        "tensor, model.flash.onnx)")


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
    p.set_defaults(run=commands.export)

    p = sub.add_parser("rewrite", help="DIR/model.onnx -> DIR/model.plugin.onnx (one DisentangledAttention node per "
                                       "layer) or, with --fuse attention, DIR/model.flash.onnx")
    p.add_argument("onnx", type=Path, help="a model.onnx written by 'debertrt export' (its manifest.json gives the config)")
    _fuse_arg(p)
    p.add_argument("--out", type=Path, default=None,
                   help="output path (default: DIR/model.plugin.onnx, or DIR/model.flash.onnx with --fuse attention)")
    p.add_argument("--max-sequence", type=_positive, default=None, metavar="N",
                   help="longest sequence the plugin graph takes: sizes its relative-position table (default "
                        "max_position_embeddings; beyond it only for models without absolute positions)")
    p.set_defaults(run=commands.rewrite)

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
    p.set_defaults(run=commands.calibrate)

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
    p.set_defaults(run=commands.engine)

    p = sub.add_parser("parity", help="check artifacts against the PyTorch fp32 reference")
    _model_args(p)
    p.add_argument("--artifact", type=Path, action="append", required=True,
                   help="an artifact to check (repeat for several)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="tolerance class (default: read from each artifact)")
    _data_args(p)
    p.add_argument("--out", type=Path, required=True, help="report path stem: writes OUT.json, OUT.md, OUT_errors.png")
    p.set_defaults(run=commands.parity)

    p = sub.add_parser("build", help="export -> rewrite -> fp16/int8 -> engines -> parity into one directory "
                                     f"(no arguments: {DEFAULT_MODEL})")
    _model_args(p, required=False)
    _export_args(p)
    _data_args(p)
    p.add_argument("--precision", action="append", choices=PRECISIONS, default=None,
                   help="artifacts to produce (repeat; default fp32, fp16 and int8)")
    _fuse_arg(p)
    _engine_args(p, BACKEND_CHOICES, "auto")
    _int8_args(p)
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output directory (default ./{DEFAULT_OUT})")
    p.set_defaults(run=commands.build)

    _serving_commands(sub)
    return parser


def _serving_commands(sub) -> None:
    p = sub.add_parser("export-triton", help="an engine or ONNX artifact -> a Triton model repository: tokenizer, "
                                             "model, post-processing, ensemble (text in, answers out)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--engine", type=Path, help="engine directory (one engine), NAME.plan or NAME.json: "
                                                    "the model step runs on Triton's TensorRT backend")
    source.add_argument("--onnx", type=Path, help="an ONNX artifact (model.onnx, model.int8.onnx, plugin graphs too): "
                                                  "the model step runs ONNX Runtime in the Python backend (CPU)")
    p.add_argument("--out", type=Path, required=True, help="model repository directory (created or added to)")
    p.add_argument("--name", default=None, help="Triton model name of the ensemble (default <model>-<task>)")
    p.add_argument("--model", default=None, help="preset or checkpoint directory for the tokenizer and labels "
                                                 "(default: the one the artifact records)")
    p.add_argument("--tokenizer", type=Path, default=None, help="a directory with the tokenizer files "
                                                                "(default: the model's)")
    p.add_argument("--model-only", action="store_true", help="write the model step alone, named NAME")
    p.add_argument("--python-env", default="auto", metavar="auto|none|PATH",
                   help="EXECUTION_ENV_PATH of the Python-backend models: auto (default: this Python's packages), "
                        "none (the server's Python), or an environment directory / conda-pack archive on the server")
    p.add_argument("--max-batch-size", type=_positive, default=None, help="--onnx: largest batch (default 16)")
    p.add_argument("--max-length", type=_positive, default=None,
                   help="longest text in tokens (default: the engine's profiles, else the model's maximum)")
    p.add_argument("--pad-to-multiple-of", type=_positive, default=16,
                   help="pad token sequences to a multiple of this, so more requests batch together (default 16)")
    p.add_argument("--plugin-library", type=Path, default=None,
                   help="self-registering plugin library for plugin engines (default libdebertrt_plugins_static.so "
                        "beside the one the engine was built with)")
    p.add_argument("--instances", type=_positive, default=1, help="model step instances (default 1)")
    p.set_defaults(run=commands.export_triton)

    p = sub.add_parser("serve", help="start a local Triton Inference Server on a model repository and print its URLs")
    p.add_argument("repo", type=Path, help="a model repository written by debertrt export-triton")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    for kind, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        p.add_argument(f"--{kind}-port", type=int, default=default, help=f"{kind} port (default {default}; 0: any free)")
    p.add_argument("--tritonserver", type=Path, default=None,
                   help="a tritonserver binary with its backends beside it (default: nvidia-pytriton's)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait until every model is ready")
    p.set_defaults(run=commands.serve)


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
