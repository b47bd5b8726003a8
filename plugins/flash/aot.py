"""Ahead-of-time compilation of the DisentangledFlashAttention kernel, no GPU needed.

``compile_kernel`` runs Triton's compiler for a CUDA target (sm_80, sm_90, ...) and returns
the PTX and cubin with their resource use (registers and spill stack from the cubin via the
``cuobjdump`` bundled with Triton, shared memory from Triton's metadata). The same PTX and
launch facts are what a TensorRT plugin (``tensorrt.plugin`` aot_impl, or a C++ launcher
from ``triton.tools.compile``) needs.

Run in a process that has not set TRITON_INTERPRET=1 (compiling and interpreting do not mix).
``python -m debertrt.plugins.flash.aot`` prints the resource table for the default configs.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from .kernel import DEFAULT_CONFIG, KernelConfig, _flash_fwd
from .reference import masked_score

_POINTER_TYPES = {"float32": "*fp32", "float16": "*fp16", "bfloat16": "*bf16"}
_UNIT_STRIDES = ("sqd", "skd", "svd", "spkd", "spqd", "sms", "sod")  # contiguous last dims
_FLOATS = ("c2c_factor", "c2p_factor", "p2c_factor")
_FLOAT_POINTERS = ("Q", "K", "V", "PK", "PQ", "OUT")


@dataclass
class CompiledKernel:
    arch: int
    dtype: str
    head_dim: int
    has_c2p: bool
    has_p2c: bool
    config: dict
    name: str
    shared_bytes: int
    registers: int | None
    spill_stack_bytes: int | None
    ptx_chars: int
    ptx: str = ""

    def summary(self) -> str:
        c = self.config
        return (f"sm_{self.arch} {self.dtype} D={self.head_dim} tiles={c['block_m']}x{c['block_n']} "
                f"warps={c['num_warps']} stages={c['num_stages']}: registers {self.registers}, spill stack "
                f"{self.spill_stack_bytes} B, shared {self.shared_bytes} B")


def compile_kernel(dtype: str = "float16", head_dim: int = 64, has_c2p: bool = True, has_p2c: bool = True,
                   config: KernelConfig | None = None, arch: int = 90) -> CompiledKernel:
    """Compile for ``sm_<arch>`` with contiguous last dims and 16-divisible pointers/strides (what a launch specializes)."""
    import triton
    from triton.backends.compiler import GPUTarget

    config = config or DEFAULT_CONFIG
    constants = {"MASKED": masked_score(dtype), "HAS_C2P": has_c2p, "HAS_P2C": has_p2c,
                 **({} if has_c2p else {"PK": None}), **({} if has_p2c else {"PQ": None}),
                 "BLOCK_M": config.block_m, "BLOCK_N": config.block_n,
                 "BLOCK_D": max(16, triton.next_power_of_2(head_dim)), "WINDOW": config.window,
                 "PRECISION": "ieee" if dtype == "float32" else "tf32"}
    constants.update({name: 1 for name in _UNIT_STRIDES})
    signature, attrs = {}, {}
    for index, name in enumerate(_flash_fwd.arg_names):
        if name in constants:
            signature[name] = "constexpr"
        elif name in ("MASK", "TABLE"):
            signature[name] = "*i32"
        elif name in _FLOAT_POINTERS:
            signature[name] = _POINTER_TYPES[dtype]
        elif name in _FLOATS:
            signature[name] = "fp32"
        else:
            signature[name] = "i32"
        if signature[name].startswith("*") or (signature[name] == "i32" and name.startswith("s")):
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(fn=_flash_fwd, signature=signature, constexprs=constants, attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    options = triton.compiler.make_backend(target).parse_options(
        {"num_warps": config.num_warps, "num_stages": config.num_stages})
    compiled = triton.compile(source, target=target, options=options.__dict__)
    registers, stack = cubin_resources(compiled.asm["cubin"])
    ptx = compiled.asm["ptx"]
    return CompiledKernel(arch, dtype, head_dim, has_c2p, has_p2c, asdict(config), compiled.metadata.name,
                          int(compiled.metadata.shared), registers, stack, len(ptx), ptx)


def cubin_resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, stack bytes) of the cubin's kernel, from Triton's bundled cuobjdump; (None, None) without it."""
    from triton import knobs

    tool = knobs.nvidia.cuobjdump
    if tool is None:  # neither bundled nor on TRITON_CUOBJDUMP_PATH
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool.path, "--dump-resource-usage", f.name], capture_output=True, text=True).stdout
    match = re.search(r"REG:(\d+)\s+STACK:(\d+)", out)
    return (int(match.group(1)), int(match.group(2))) if match else (None, None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    parser.add_argument("--dtype", nargs="+", default=["float16", "bfloat16"])
    parser.add_argument("--head-dim", type=int, nargs="+", default=[32, 64, 128])
    parser.add_argument("--json", type=Path)
    parser.add_argument("--ptx-dir", type=Path, help="also write each kernel's PTX here")
    args = parser.parse_args(argv)
    results = []
    for arch in args.arch:
        for dtype in args.dtype:
            for head_dim in args.head_dim:
                kernel = compile_kernel(dtype, head_dim, arch=arch)
                print(kernel.summary(), flush=True)
                if args.ptx_dir:
                    args.ptx_dir.mkdir(parents=True, exist_ok=True)
                    (args.ptx_dir / f"flash_sm{arch}_{dtype}_d{head_dim}.ptx").write_text(kernel.ptx)
                results.append({k: v for k, v in asdict(kernel).items() if k != "ptx"})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
