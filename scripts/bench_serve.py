#!/usr/bin/env python
"""Load test of a served text pipeline: N concurrent clients, every answer checked against the direct run.

    python scripts/bench_serve.py --onnx debertrt-out/model.int8.onnx --model tiny-deberta-v3-trained \
        [--clients 1,4,16] [--requests 3000] [--protocol http] [--json bench_serve.json]

Thin wrapper over ``debertrt.compiler.bench_serve``: exports the pipeline with the ONNX Runtime
model step, starts tritonserver on loopback ports, runs the load, stops the server, prints a
Markdown table and writes JSON. Exits non-zero if any request failed or any answer differed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnx", required=True, help="the ONNX artifact to serve (its manifest gives the task)")
    parser.add_argument("--model", default="tiny-deberta-v3-trained", help="preset or checkpoint (tokenizer, labels)")
    parser.add_argument("--clients", default="1,4,16", help="concurrent clients per level, comma-separated")
    parser.add_argument("--requests", type=int, default=3000, help="requests in all, split evenly over the levels")
    parser.add_argument("--protocol", choices=("http", "grpc"), default="http")
    parser.add_argument("--max-queue-delay-us", type=int, default=None,
                        help="the model step's dynamic batching delay (default: export-triton's, 100)")
    parser.add_argument("--json", default="bench_serve.json", help="where to write the results")
    args = parser.parse_args(argv)

    from debertrt.compiler import bench_serve as bench

    clients = tuple(int(c) for c in args.clients.split(","))
    with tempfile.TemporaryDirectory(prefix="bench_serve.") as work:
        result = bench.benchmark(args.onnx, args.model, work, clients=clients, requests=args.requests,
                                 protocol=args.protocol, max_queue_delay_us=args.max_queue_delay_us)
    result["command"] = "python scripts/bench_serve.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with open(args.json, "w") as f:
        json.dump(result, f, indent=2)
    print()
    print(bench.table(result))
    m = result["machine"]
    print(f"\n{m['cpu']} ({', '.join(m['flags'])}; {m['cores']} cores); "
          f"{'PASSED' if result['passed'] else 'FAILED'}: zero errors and every answer equal to the direct run; "
          f"results in {args.json}")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
