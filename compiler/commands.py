"""The bodies of the ``debertrt`` subcommands: each calls one library stage with the parsed
arguments and prints what it wrote. Heavy modules are imported inside each command, so building
the parser stays light."""

from __future__ import annotations

import sys
from pathlib import Path

from debertrt.core.errors import DebertrtError

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


def export(args) -> int:
    from debertrt.core.models import load_model

    from .export import export

    path = export(load_model(args.model, args.task), args.out, _export_options(args))
    print(f"wrote {path}")
    return 0


def rewrite(args) -> int:
    from .rewrite import rewrite

    result = rewrite(args.onnx, args.out, max_sequence=args.max_sequence, fuse=args.fuse)
    print(f"wrote {result.path} (report {result.report.name})")
    print(result.summary["text"])
    return 0


def calibrate(args) -> int:
    from debertrt.core.artifacts import manifest_model
    from debertrt.core.data import text_dataset
    from debertrt.core.models import load_model

    if not args.onnx.is_file():
        raise DebertrtError(f"ONNX file {str(args.onnx)!r} not found")
    model, task = manifest_model(args.onnx)
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


def parity(args) -> int:
    from debertrt.core.models import load_model

    from .parity import parity

    ref = load_model(args.model, args.task)
    result = parity(ref, args.artifact, _datasets(args, ref, ["parity"])["parity"], args.out,
                    precisions=[args.precision] * len(args.artifact))
    _print_summary(result, args.out)
    return _exit_code(result)


def build(args) -> int:
    from debertrt.core.models import load_model

    from .pipeline import PRECISIONS, BuildOptions, build, cost_lines

    options = BuildOptions(precisions=tuple(args.precision or PRECISIONS), backend=args.backend,
                           profiles=tuple(args.profile or ()), export=_export_options(args),
                           method=args.method, max_accuracy_loss=args.max_accuracy_loss,
                           plugin_library=args.plugin_library, fuse=args.fuse)
    ref = load_model(args.model, args.task, lazy=True)  # weights load where the export runs
    purposes = ["parity"] if set(options.precisions) == {"fp32"} else ["calibration", "fallback", "parity"]
    result = build(ref, args.out, options, _datasets(args, ref, purposes, options.profiles), release_torch=True)
    for note in result.notes:
        print(f"note: {note}")
    print("\n".join(["time and memory per stage:"] + cost_lines(result.costs)))
    _print_summary(result.parity, args.out / "parity")
    return _exit_code(result.parity)


def engine(args) -> int:
    from .engine import EngineOptions, build_engine

    options = EngineOptions(backend=args.backend, profiles=tuple(args.profile or ()),
                            optimization_level=args.optimization_level, timing_cache=args.timing_cache,
                            plugin_library=args.plugin_library, workspace_mib=args.workspace,
                            compute_capabilities=tuple(args.compute_capability or ()),
                            verbose=args.verbosity > 0)
    plan = build_engine(args.onnx, args.out or args.onnx.parent, options, name=args.name)
    print(f"wrote {plan} and {plan.with_suffix('.json').name}")
    return 0


def export_triton(args) -> int:
    from .triton import TritonOptions, export_triton

    options = TritonOptions(name=args.name, model=args.model, tokenizer=args.tokenizer, model_only=args.model_only,
                            python_env=args.python_env, max_batch_size=args.max_batch_size, max_length=args.max_length,
                            pad_to_multiple_of=args.pad_to_multiple_of, instances=args.instances,
                            plugin_library=args.plugin_library)
    model_dir = export_triton(args.out, engine=args.engine, onnx=args.onnx, options=options)
    print(f"wrote {model_dir} (see {args.out / 'README.md'}); serve it with: debertrt serve {args.out}")
    return 0


def serve(args) -> int:
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
