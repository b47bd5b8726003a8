#!/usr/bin/env python3
"""Build a TensorRT / TensorRT-RTX engine from an ONNX artifact: ``debertrt engine`` as a script.

    python scripts/build_engine.py out/model.onnx --backend tensorrt-rtx --profile batch=1:4:16,sequence=1:128:512
"""

import sys

from debertrt.compiler.cli import main

if __name__ == "__main__":
    sys.exit(main(["engine", *sys.argv[1:]]))
