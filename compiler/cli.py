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
    parser = _Parser(prog="debertrt", description="DeBERTa from PyTorch to TensorRT engines, with parity reports.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    p = sub.add_parser("export", help="PyTorch -> DIR/model.onnx (dynamic batch and sequence)")
    _add_model_args(p)
    _add_export_args(p)
    p.add_argument("--out", type=Path, required=True, help="output directory")
    p.set_defaults(run=_cmd_export)

    p = sub.add_parser("parity", help="check artifacts against the PyTorch fp32 reference")
    _add_model_args(p)
    p.add_argument("--artifact", type=Path, action="append", required=True,
                   help="an artifact to check (repeat for several)")
    p.add_argument("--precision", choices=("fp32", "fp16", "int8"), default=None,
                   help="tolerance class (default: read from the artifact)")
    _add_data_args(p)
    p.add_argument("--out", type=Path, required=True, help="report path stem: writes OUT.json, OUT.md, OUT_errors.png")
    p.set_defaults(run=_cmd_parity)

    p = sub.add_parser("build", help="the whole chain into one directory (no arguments: tiny-deberta-v3)")
    _add_model_args(p, required=False)
    _add_export_args(p)
    _add_data_args(p)
    p.add_argument("--out", type=Path, default=Path(DEFAULT_OUT), help=f"output directory (default ./{DEFAULT_OUT})")
    p.set_defaults(run=_cmd_build)
    return parser


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
    from .export import export
    from .models import load_model
    from .parity import parity

    ref = load_model(args.model, args.task)
    print(f"[1/2] export {ref.name} ({ref.task}) -> {args.out}")
    onnx_path = export(ref, args.out, _export_options(args))
    print(f"[2/2] parity")
    report = args.out / "parity"
    result = parity(ref, [onnx_path], _dataset(args, ref), report)
    _print_summary(result, report)
    return 0 if result["passed"] else 1


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
