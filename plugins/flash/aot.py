"""Ahead-of-time compilation of the DisentangledFlashAttention kernel, no GPU needed.

``compile_kernel`` runs Triton's compiler for a CUDA target (sm_80, sm_90, ...) with the
specialization the TensorRT plugin launches, and returns the PTX and cubin with their
parameter list and resource use (registers and spill stack from the cubin via the
``cuobjdump`` bundled with Triton, shared memory from Triton's metadata). ``cubins``
embeds such cubins in the plugin library.

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
# Multiples of the head dim for contiguous q/k/v [B, H, S, D], pos_* [H, 2P, D] and the output
# [B, S, H*D]; with D itself a multiple of 16 (the plugin refuses other head dims) they are all
# 16-divisible, so loads and stores vectorize. The mask's row stride (S) has no such hint.
_HEAD_DIM_MULTIPLES = ("sqb", "sqh", "sqs", "skb", "skh", "sks", "svb", "svh", "svs", "spkh", "spkr", "spqh",
                       "spqr", "sob", "sos", "D")
_FLOATS = ("c2c_factor", "c2p_factor", "p2c_factor")
_FLOAT_POINTERS = ("Q", "K", "V", "PK", "PQ", "OUT")
# Triton >= 3.3 appends pointer parameters to every kernel (3.9: these two); a launcher passes null
# when the compiled kernel needs no scratch (checked in compile_kernel).
HIDDEN_PARAMETERS = ("global_scratch", "profile_scratch")
# one PTX .entry parameter ("<kernel>_param_<n>")
_PTX_PARAM = re.compile(r"\b\w+_param_\d+\b")


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
    block_d: int = 0
    num_warps: int = 0
    parameters: tuple = ()  # the kernel's parameters in launch order, hidden pointers (as many as it has) last
    ptx: str = ""
    cubin: bytes = b""

    def summary(self) -> str:
        c = self.config
        return (f"sm_{self.arch} {self.dtype} D={self.head_dim} tiles={c['block_m']}x{c['block_n']} "
                f"warps={c['num_warps']} stages={c['num_stages']}: registers {self.registers}, spill stack "
                f"{self.spill_stack_bytes} B, shared {self.shared_bytes} B")

    def report(self) -> dict:
        """JSON-friendly facts (no PTX, no cubin)."""
        return {k: v for k, v in asdict(self).items() if k not in ("ptx", "cubin")}


def compile_kernel(dtype: str = "float16", head_dim: int = 64, has_c2p: bool = True, has_p2c: bool = True,
                   config: KernelConfig | None = None, arch: int = 90) -> CompiledKernel:
    """Compile for ``sm_<arch>`` as the TensorRT plugin launches it: contiguous tensors, 16-byte aligned
    pointers, a head dim that is a multiple of 16 (padded to ``BLOCK_D``), every pointer parameter
    present (an absent positional input's branch is compiled out by ``HAS_C2P``/``HAS_P2C``).

    Raises ``RuntimeError`` when the kernel would need Triton's global or profile scratch memory, or
    its PTX parameters are not the runtime arguments plus the two hidden pointers."""
    import triton
    from triton.backends.compiler import GPUTarget

    config = config or DEFAULT_CONFIG
    block_d = max(16, triton.next_power_of_2(head_dim))
    constants = {"MASKED": masked_score(dtype), "HAS_C2P": has_c2p, "HAS_P2C": has_p2c,
                 "BLOCK_M": config.block_m, "BLOCK_N": config.block_n, "BLOCK_D": block_d, "WINDOW": config.window,
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
        if signature[name].startswith("*") or name in _HEAD_DIM_MULTIPLES:
            attrs[(index,)] = [["tt.divisibility", 16]]
    source = triton.compiler.ASTSource(fn=_flash_fwd, signature=signature, constexprs=constants, attrs=attrs)
    target = GPUTarget("cuda", arch, 32)
    # FMA contraction on, pinned: Triton 3.9's JIT default (which it warns will change in 3.10)
    options = triton.compiler.make_backend(target).parse_options(
        {"num_warps": config.num_warps, "num_stages": config.num_stages, "enable_fp_fusion": True})
    compiled = triton.compile(source, target=target, options=options.__dict__)
    meta = compiled.metadata
    if getattr(meta, "global_scratch_size", 0) or getattr(meta, "profile_scratch_size", 0):
        raise RuntimeError(f"the kernel needs Triton scratch memory (global {meta.global_scratch_size} B, profile "
                           f"{meta.profile_scratch_size} B), which the plugin's launcher does not allocate")
    if getattr(meta, "num_ctas", 1) != 1 or getattr(meta, "launch_cooperative_grid", False) or \
            getattr(meta, "launch_pdl", False):
        raise RuntimeError("the kernel needs a cluster, cooperative or PDL launch, which the plugin's launcher "
                           "does not make")
    ptx = compiled.asm["ptx"]
    runtime = tuple(n for n in _flash_fwd.arg_names if n not in constants)
    entry = re.search(r"\.entry\s+\w+\s*\((.*?)\)", ptx, re.S)
    hidden = (len(_PTX_PARAM.findall(entry.group(1))) if entry else -1) - len(runtime)
    if not 0 <= hidden <= len(HIDDEN_PARAMETERS):
        raise RuntimeError(f"the compiled kernel's parameters are not the {len(runtime)} expected ({', '.join(runtime)}) "
                           f"followed by at most {len(HIDDEN_PARAMETERS)} hidden pointers: this Triton passes "
                           f"arguments differently")
    parameters = runtime + HIDDEN_PARAMETERS[:hidden]
    registers, stack = cubin_resources(compiled.asm["cubin"])
    return CompiledKernel(arch, dtype, head_dim, has_c2p, has_p2c, asdict(config), meta.name, int(meta.shared),
                          registers, stack, len(ptx), block_d, config.num_warps, parameters, ptx,
                          compiled.asm["cubin"])


def cubin_resources(cubin: bytes) -> tuple[int | None, int | None]:
    """(registers, stack bytes) of the cubin's kernel, from Triton's bundled cuobjdump; (None, None) without it
    (or with a Triton older than 3.4, which has no ``knobs`` to find it)."""
    try:
        from triton import knobs
    except ImportError:
        return None, None
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
                results.append(kernel.report())
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
