#!/usr/bin/env python3
"""Check artifacts against the PyTorch fp32 reference: ``debertrt parity`` as a script.

    python scripts/parity_report.py --model tiny-deberta-v3 --task sequence-classification \
        --artifact out/model.onnx --artifact out/model.int8.onnx --out out/parity
"""

import sys

from debertrt.compiler.cli import main

if __name__ == "__main__":
    sys.exit(main(["parity", *sys.argv[1:]]))
