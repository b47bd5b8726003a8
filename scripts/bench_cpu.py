#!/usr/bin/env python
"""ONNX Runtime CPU latency: fp32 vs debertrt int8 (QDQ) vs onnxruntime.quantization.quantize_dynamic.

    python scripts/bench_cpu.py [--base] [--json bench_cpu.json]

Thin wrapper over ``debertrt.calibration.bench``; prints a Markdown table and writes JSON.
"""

from __future__ import annotations

import argparse
import sys


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", action="store_true",
                        help="also a DeBERTa-v3-base-sized random model (first run exports ~700 MB, cached)")
    parser.add_argument("--repeat", type=int, default=10, help="timed runs per shape, tiny model (median)")
    parser.add_argument("--base-repeat", type=int, default=3, help="timed runs per shape, base model (median)")
    parser.add_argument("--threads", type=int, default=None, help="intra-op threads (default: ORT's)")
    parser.add_argument("--json", default="bench_cpu.json", help="where to write the results")
    args = parser.parse_args(argv)

    from debertrt.compiler import bench_cpu as bench

    result = bench.run(base=args.base, repeat=args.repeat, base_repeat=args.base_repeat, threads=args.threads)
    bench.save(result, args.json)
    print()
    print(bench.table(result))
    g = result["goal"]
    print(f"\ngoal (ours at least as fast as quantize_dynamic everywhere, at least as accurate): "
          f"{'met' if g['met'] else 'NOT met'}; results in {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
