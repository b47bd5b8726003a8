"""The ``debertrt`` command: thin argument groups over the library's stages.

Bad flags are rejected while parsing, before any work; a ``DebertrtError`` becomes one
line on stderr and exit code 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import DebertrtError

DEFAULT_MODEL = "tiny-deberta-v3"
DEFAULT_TASK = "sequence-classification"
DEFAULT_OUT = "debertrt-out"


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not usage + message
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_model_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    from .models import PRESETS, TASKS

    p.add_argument("--model", required=required, default=None if required else DEFAULT_MODEL,
                   help=f"a save_pretrained directory, or a preset: {', '.join(PRESETS)}")
    p.add_argument("--task", required=required, default=None if required else DEFAULT_TASK,
                   help=f"one of: {', '.join(TASKS)}")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", type=Path, help="a .txt/.jsonl/.csv file tokenized with the checkpoint's "
                                             "tokenizer (default: random token batches with padding)")
    p.add_argument("--batches", type=_positive, default=4, help="random batches (default 4)")
    p.add_argument("--batch-size", type=_positive, default=4, help="examples per batch (default 4)")
    p.add_argument("--max-length", type=_positive, default=None,
                   help="longest sequence (default: 128 for random data, the model's maximum for files)")


def _add_export_args(p: argparse.ArgumentParser) -> None:
    from .export import DEFAULT_OPSET, EXPORTERS

    p.add_argument("--exporter", choices=EXPORTERS, default="dynamo", help="torch.onnx exporter (default dynamo)")
    p.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    p.add_argument("--external-data", action="store_true", default=None,
                   help="store weights beside the graph (automatic over 2 GB)")


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    from debertrt.calibration.int8 import METHODS

    from .pipeline import BACKEND_CHOICES, PRECISIONS

    parser = _Parser(prog="debertrt", description="DeBERTa from PyTorch to TensorRT engines, with parity reports.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("export", help="PyTorch -> DIR/model.onnx (dynamic batch and sequence)")
    _add_model_args(p)
    _add_export_args(p)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("rewrite", help="DIR/model.onnx -> DIR/model.plugin.onnx (one DisentangledAttention node per layer)")
    p.add_argument("onnx", type=Path, help="a model.onnx written by 'debertrt export' (its manifest.json gives the config)")
    p.add_argument("--out", type=Path, default=None, help="output path (default: DIR/model.plugin.onnx)")
    p.set_defaults(run=_cmd_rewrite)

    _add_calibrate_command(sub)

    p = sub.add_parser("parity", help="check artifacts against the PyTorch fp32 reference")
    _add_model_args(p)
    p.add_argument("--artifact", type=Path, action="append", required=True,
                   help="an artifact to check (repeat for several)")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="tolerance class (default: read from the artifact)")
    _add_data_args(p)
    p.add_argument("--out", type=Path, required=True, help="report path stem: writes OUT.json, OUT.md, OUT_errors.png")
    p.set_defaults(run=_cmd_parity)

    p = sub.add_parser("build", help="export -> rewrite -> fp16/int8 -> engines -> parity into one directory "
                                     "(no arguments: tiny-deberta-v3)")
    _add_model_args(p, required=False)
    _add_export_args(p)
    _add_data_args(p)
    p.add_argument("--precision", action="append", choices=PRECISIONS, default=None,
                   help="artifacts to produce (repeat; default fp32, fp16 and int8)")
    p.add_argument("--backend", choices=BACKEND_CHOICES, default="auto",
                   help="engine builder (default auto: TensorRT, else TensorRT-RTX, else none)")
    p.add_argument("--profile", type=_profile, action="append", default=None,
                   help="engine optimization profile, e.g. batch=1:4:16,sequence=1:128:512 (repeat for several)")
    p.add_argument("--method", choices=METHODS, default="max",
                   help="int8 calibration method (default max)")
    p.add_argument("--max-accuracy-loss", type=_fraction, default=0.01,
                   help="int8 fallback budget, relative to fp32 (default 0.01)")
    p.add_argument("--plugin-library", type=Path, default=None,
                   help="libdebertrt_plugins.so for TensorRT plugin engines")
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output directory (default ./{DEFAULT_OUT})")
    p.set_defaults(run=_cmd_build)
    _add_engine_commands(sub)
    return parser


def _profile(text: str):
    from .engine import Profile

    try:
        return Profile.parse(text)
    except DebertrtError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _add_engine_commands(sub) -> None:
    from .engine import BACKENDS, DEFAULT_OPTIMIZATION_LEVEL, RTX_COMPUTE_CAPABILITIES

    p = sub.add_parser("engine", help="an ONNX artifact -> DIR/engine.plan + engine.json (TensorRT or TensorRT-RTX)")
    p.add_argument("onnx", type=Path, help="model.onnx, model.plugin.onnx, model.fp16.onnx or model.int8.onnx")
    p.add_argument("--backend", choices=BACKENDS, default="tensorrt",
                   help="tensorrt (10.x/11.x, needs a GPU) or tensorrt-rtx (ahead of time, no GPU, no plugins)")
    p.add_argument("--profile", type=_profile, action="append", default=None,
                   help="optimization profile, e.g. batch=1:4:16,sequence=1:128:512 (repeat for several; "
                        "default batch=1:4:16,sequence=1:128:<model max>)")
    p.add_argument("--out", type=Path, default=None, help="output directory (default: the ONNX file's)")
    p.add_argument("--name", default="engine", help="writes NAME.plan and NAME.json (default engine)")
    p.add_argument("--optimization-level", type=int, choices=range(6), default=DEFAULT_OPTIMIZATION_LEVEL,
                   metavar="0-5", help=f"builder optimization level (default {DEFAULT_OPTIMIZATION_LEVEL})")
    p.add_argument("--timing-cache", type=Path, default=None, help="timing cache file, read and updated (TensorRT)")
    p.add_argument("--plugin-library", type=Path, default=None,
                   help="libdebertrt_plugins.so for plugin graphs (default: $DEBERTRT_PLUGIN_LIBRARY or build/plugins)")
    p.add_argument("--workspace", type=_positive, default=None, metavar="MIB", help="workspace memory limit in MiB")
    p.add_argument("--compute-capability", action="append", default=None,
                   choices=RTX_COMPUTE_CAPABILITIES, help="TensorRT-RTX target (repeat; default: its portable set)")
    p.add_argument("--verbose", action="store_true", help="print the builder's warnings")
    p.set_defaults(run=_cmd_engine)

    _add_serving_commands(sub)


def _dataset(args, ref):
    from .inputs import random_dataset, text_dataset

    if args.data is not None:
        return text_dataset(ref, args.data, batch_size=args.batch_size, max_length=args.max_length)
    if ref.eval_dataset is not None:
        return ref.eval_dataset
    return random_dataset(ref, batches=args.batches, batch_size=args.batch_size,
                          max_sequence=args.max_length or min(128, ref.max_sequence))


def _export_options(args):
    from .export import ExportOptions

    return ExportOptions(exporter=args.exporter, opset=args.opset, external_data=args.external_data)


def _cmd_export(args) -> int:
    from .export import export
    from .models import load_model

    ref = load_model(args.model, args.task)
    path = export(ref, args.out, _export_options(args))
    print(f"wrote {path}")
    return 0


def _cmd_rewrite(args) -> int:
    from .artifacts import read_json
    from .rewrite import report_path_for, rewrite, summary

    path = rewrite(args.onnx, args.out)
    report = report_path_for(path)
    print(f"wrote {path} (report {report.name})")
    print(summary(read_json(report)))
    return 0


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1) (relative), got {value}")
    return value


def _fp16_threshold(text: str) -> float:
    from debertrt.calibration.fp16 import FP16_MAX

    value = float(text)
    if not 0 < value <= FP16_MAX:
        raise argparse.ArgumentTypeError(f"must be in (0, {FP16_MAX:g}], got {value}")
    return value


def _add_calibrate_command(sub) -> None:
    from debertrt.calibration.fp16 import DEFAULT_THRESHOLD, FP16_MAX
    from debertrt.calibration.int8 import METHODS

    p = sub.add_parser("calibrate", help="DIR/model.onnx -> DIR/model.fp16.onnx or DIR/model.int8.onnx "
                                         "(precision lives in the ONNX: fp32 islands / explicit Q/DQ)")
    p.add_argument("onnx", type=Path, help="the fp32 model.onnx (or model.plugin.onnx) of 'debertrt export' / 'rewrite'")
    p.add_argument("--precision", choices=("fp16", "int8"), required=True)
    p.add_argument("--model", default=None, help="preset or checkpoint directory (default: DIR/manifest.json's export)")
    p.add_argument("--task", default=None, help="the model's task (default: DIR/manifest.json's export)")
    p.add_argument("--data", type=Path, default=None,
                   help="calibration examples, .txt/.jsonl/.csv, tokenized with the checkpoint's tokenizer "
                        "(default: random token batches with padding)")
    p.add_argument("--eval-data", type=Path, default=None,
                   help="int8 fallback: examples (with labels: accuracy, else agreement with fp32) "
                        "(default: the preset's evaluation set, else the calibration data)")
    p.add_argument("--batches", type=_positive, default=8, help="random calibration batches (default 8)")
    p.add_argument("--batch-size", type=_positive, default=8, help="examples per batch (default 8)")
    p.add_argument("--max-length", type=_positive, default=None,
                   help="longest sequence (default: 128 for random data, the model's maximum for files)")
    p.add_argument("--method", choices=METHODS, default="max", help="int8 range calibration (default max)")
    p.add_argument("--max-accuracy-loss", type=_fraction, default=0.01,
                   help="int8: largest task-metric loss relative to fp32 before layers fall back (default 0.01)")
    p.add_argument("--no-fallback", action="store_true", help="int8: quantize every weight MatMul, measure nothing")
    p.add_argument("--fp16-threshold", type=_fp16_threshold, default=DEFAULT_THRESHOLD,
                   help=f"fp16: activations above this |x| stay fp32 (default {DEFAULT_THRESHOLD:g} = half of "
                        f"{FP16_MAX:g})")
    p.add_argument("--out", type=Path, default=None,
                   help="output path (default: DIR/model.fp16.onnx or DIR/model.int8.onnx)")
    p.set_defaults(run=_cmd_calibrate)


def _cmd_calibrate(args) -> int:
    from debertrt.calibration.data import calibration_dataset
    from .artifacts import read_json
    from .models import load_model

    if not args.onnx.is_file():
        raise DebertrtError(f"ONNX file {str(args.onnx)!r} not found")
    from .artifacts import manifest_model

    model, task = manifest_model(args.onnx)
    model, task = args.model or model, args.task or task
    if bool(model) != bool(task):
        raise DebertrtError("give both --model and --task (the manifest beside the ONNX names only one)")
    ref = load_model(model, task) if model else None
    dataset = None
    if args.data is not None or ref is not None:
        dataset = calibration_dataset(ref, args.data, batches=args.batches, batch_size=args.batch_size,
                                      max_length=args.max_length)
    if args.precision == "fp16":
        from debertrt.calibration.fp16 import Fp16Options, to_fp16
        from debertrt.calibration.graph import report_paths

        path = to_fp16(args.onnx, args.out, dataset, ref=ref, options=Fp16Options(threshold=args.fp16_threshold))
        s = read_json(report_paths(path)[0])["summary"]
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(s["fp32_by_kind"].items()))
        print(f"wrote {path}: {s['nodes_fp16']} nodes fp16, {s['nodes_fp32']} fp32 ({kinds}), "
              f"{s['casts_inserted']} casts (report {report_paths(path)[1].name})")
        return 0

    from debertrt.calibration.graph import report_paths
    from debertrt.calibration.int8 import Int8Options, quantize_int8
    from .inputs import text_dataset

    evaluation = None
    if args.eval_data is not None:
        if ref is None:
            raise DebertrtError("--eval-data needs the model's tokenizer: pass --model and --task")
        evaluation = text_dataset(ref, args.eval_data, batch_size=args.batch_size, max_length=args.max_length)
    options = Int8Options(method=args.method, max_accuracy_loss=None if args.no_fallback else args.max_accuracy_loss)
    path = quantize_int8(args.onnx, args.out, dataset, ref=ref, task=task, eval_dataset=evaluation, options=options)
    s = read_json(report_paths(path)[0])["summary"]
    print(f"wrote {path}: {s['quantized_matmuls']}/{s['candidate_matmuls']} MatMul/Gemm in int8; {s['metric']} "
          f"fp32 {s['fp32']:.4f} -> int8 {s['int8']:.4f}"
          + (f" ({'within' if s['within_budget'] else 'NOT within'} budget)" if not args.no_fallback else "")
          + (f"; left in float: {', '.join(s['float_groups'])}" if s["float_groups"] else "")
          + f" (report {report_paths(path)[1].name})")
    return 0


def _print_summary(result: dict, report: Path) -> None:
    for e in result["artifacts"]:
        name = Path(e["path"]).name
        if e["status"] != "ran":
            print(f"  {name:<24} {e['precision']:<5} not run: {e['reason']}")
            continue
        worst = max(m["max_abs"] for m in e["outputs"].values())
        headline = next(iter(e["task"]["agreement"].items()), None)
        agree = f"  {headline[0]} agreement {headline[1]:.2%}" if headline else ""
        print(f"  {name:<24} {e['precision']:<5} max abs {worst:.3g}{agree}  {'PASSED' if e['passed'] else 'FAILED'}")
    print(f"report: {report.with_suffix('.md')} ({'PASSED' if result['passed'] else 'FAILED'})")


def _cmd_parity(args) -> int:
    from .models import load_model
    from .parity import parity

    ref = load_model(args.model, args.task)
    result = parity(ref, args.artifact, _dataset(args, ref), args.out,
                    precisions=[args.precision] * len(args.artifact))
    _print_summary(result, args.out)
    return 0 if result["passed"] else 1


def _cmd_build(args) -> int:
    from .models import load_model
    from .pipeline import PRECISIONS, BuildOptions, build

    options = BuildOptions(precisions=tuple(args.precision or PRECISIONS), backend=args.backend,
                           profiles=tuple(args.profile or ()), export=_export_options(args),
                           calibration_data=args.data, method=args.method,
                           max_accuracy_loss=args.max_accuracy_loss, plugin_library=args.plugin_library)
    ref = load_model(args.model, args.task)
    result = build(ref, args.out, options, _dataset(args, ref))
    for note in result.notes:
        print(f"note: {note}")
    _print_summary(result.parity, args.out / "parity")
    return 0 if result.parity["passed"] else 1


def _cmd_engine(args) -> int:
    from .engine import EngineOptions, build_engine

    options = EngineOptions(backend=args.backend, profiles=tuple(args.profile or ()),
                            optimization_level=args.optimization_level, timing_cache=args.timing_cache,
                            plugin_library=args.plugin_library, workspace_mib=args.workspace,
                            compute_capabilities=tuple(args.compute_capability or ()), verbose=args.verbose)
    plan = build_engine(args.onnx, args.out or args.onnx.parent, options, name=args.name)
    print(f"wrote {plan} and {plan.with_suffix('.json').name}")
    return 0


# ---- serving: export-triton and serve (issue 15) ------------------------------------------

def _add_serving_commands(sub) -> None:
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
    p.set_defaults(run=_cmd_export_triton)

    p = sub.add_parser("serve", help="start a local Triton Inference Server on a model repository and print its URLs")
    p.add_argument("repo", type=Path, help="a model repository written by debertrt export-triton")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    for kind, default in (("http", 8000), ("grpc", 8001), ("metrics", 8002)):
        p.add_argument(f"--{kind}-port", type=int, default=default, help=f"{kind} port (default {default}; 0: any free)")
    p.add_argument("--tritonserver", type=Path, default=None,
                   help="a tritonserver binary with its backends beside it (default: nvidia-pytriton's)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait until every model is ready")
    p.set_defaults(run=_cmd_serve)


def _cmd_export_triton(args) -> int:
    from .triton import TritonOptions, export_triton

    options = TritonOptions(name=args.name, model=args.model, tokenizer=args.tokenizer, model_only=args.model_only,
                            python_env=args.python_env, max_batch_size=args.max_batch_size, max_length=args.max_length,
                            pad_to_multiple_of=args.pad_to_multiple_of, instances=args.instances,
                            plugin_library=args.plugin_library)
    model_dir = export_triton(args.out, engine=args.engine, onnx=args.onnx, options=options)
    print(f"wrote {model_dir} (see {args.out / 'README.md'}); serve it with: debertrt serve {args.out}")
    return 0


def _cmd_serve(args) -> int:
    from debertrt.runtime.serving.server import TritonServer

    server = TritonServer(args.repo, host=args.host, http_port=args.http_port, grpc_port=args.grpc_port,
                          metrics_port=args.metrics_port, tritonserver=args.tritonserver)
    try:
        server.start(timeout=args.timeout)
        print(f"serving {args.repo}: HTTP http://{server.http_url}  gRPC {server.grpc_url}  metrics "
              f"{server.metrics_url} (Ctrl-C stops)", flush=True)
        code = server.process.wait()
        if code != 0:
            print(f"debertrt: error: tritonserver exited with code {code}", file=sys.stderr)
        return 0 if code == 0 else 1
    finally:
        server.stop()

# ---- end of serving ------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
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
