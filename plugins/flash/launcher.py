"""The fused kernel's ahead-of-time launcher (``libdebertrt_flash.so``) from Python: ctypes on torch CUDA tensors.

The same cubins and C++ launcher the TensorRT plugin links, without TensorRT or Triton at run
time: what ``scripts/flash_check.py launcher`` compares with the torch reference on a GPU.
The library comes from :func:`debertrt.plugins.libraries.find_flash_library` or a path.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from debertrt.core.errors import DebertrtError

from ..cuda_kernel import DTYPE_CODES
from ..libraries import find_flash_library, load_library

ENTRY_POINT = "debertrt_flash_attention"
#: DEBERTRT_FLASH_ABI_VERSION of flash_launcher.h this binding speaks.
ABI_VERSION = 1
DTYPE_NAMES = {code: name for name, code in DTYPE_CODES.items()}


def load(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """ctypes handle on ``libdebertrt_flash.so`` (located or built when ``path`` is None)."""
    return load_library(Path(path) if path is not None else find_flash_library(), _bind)


def _bind(lib: ctypes.CDLL, path: Path) -> None:
    common = ([ctypes.c_int] + [ctypes.c_void_p] * 7 + [ctypes.c_int64, ctypes.c_void_p]
              + [ctypes.c_int64] * 5 + [ctypes.c_float] * 3)
    getattr(lib, ENTRY_POINT).argtypes = common + [ctypes.c_void_p]
    lib.debertrt_flash_kernel_arguments.argtypes = common + [ctypes.POINTER(ctypes.c_int32),
                                                             ctypes.POINTER(ctypes.c_float),
                                                             ctypes.POINTER(ctypes.c_int64)]
    lib.debertrt_flash_kernel_parameters.restype = ctypes.c_char_p
    lib.debertrt_flash_last_error.restype = ctypes.c_char_p
    lib.debertrt_flash_variant.argtypes = [ctypes.c_int] + [ctypes.POINTER(ctypes.c_int)] * 6
    if lib.debertrt_flash_abi_version() != ABI_VERSION:
        raise DebertrtError(f"{path} speaks launcher ABI {lib.debertrt_flash_abi_version()}, this binding "
                            f"speaks {ABI_VERSION}: rebuild it")


def variants(lib: ctypes.CDLL) -> list[dict]:
    """The compiled variants of a loaded library, in its table order."""
    out = []
    for index in range(lib.debertrt_flash_variant_count()):
        values = [ctypes.c_int() for _ in range(6)]
        if lib.debertrt_flash_variant(index, *values) != 0:
            raise DebertrtError(f"variant {index} of {lib._name} could not be read")
        arch, dtype, block_d, c2p, p2c, shared = (v.value for v in values)
        out.append({"arch": arch, "dtype": DTYPE_NAMES.get(dtype, str(dtype)), "block_d": block_d,
                    "has_c2p": bool(c2p), "has_p2c": bool(p2c), "shared_bytes": shared})
    return out


def _arguments(dtype: str, pointers: dict, table_len: int, dims: tuple, scales: tuple) -> list:
    names = ("q", "k", "v", "pos_key", "pos_query", "mask", "rel_table")
    return [DTYPE_CODES.get(dtype, -1), *(pointers.get(n) for n in names), table_len, pointers.get("out"), *dims,
            *scales]


def call(lib: ctypes.CDLL, dtype: str, pointers: dict, table_len: int, dims: tuple, scales: tuple,
         stream=None) -> tuple[int, str]:
    """The raw C call: ``pointers`` name -> address or None (q, k, v, pos_key, pos_query, mask,
    rel_table, out); ``dims`` = (batch, heads, seq, head_dim, 2P). Returns (cudaError_t code, reason)."""
    code = getattr(lib, ENTRY_POINT)(*_arguments(dtype, pointers, table_len, dims, scales), stream)
    return code, lib.debertrt_flash_last_error().decode()


def kernel_arguments(lib: ctypes.CDLL, dtype: str, pointers: dict, table_len: int, dims: tuple,
                     scales: tuple) -> tuple[dict, tuple[int, int, int]]:
    """What :func:`call` would launch, computed without a device: the kernel's scalar arguments by
    parameter name, and (programs, threads per program, shared bytes). A refusal is a ``DebertrtError``."""
    ints, floats, launch = (ctypes.c_int32 * 22)(), (ctypes.c_float * 3)(), (ctypes.c_int64 * 3)()
    code = lib.debertrt_flash_kernel_arguments(*_arguments(dtype, pointers, table_len, dims, scales), ints, floats,
                                               launch)
    if code != 0:
        raise DebertrtError(f"the launcher refused the arguments: {lib.debertrt_flash_last_error().decode()}")
    names = lib.debertrt_flash_kernel_parameters().decode().split(",")
    scalars = [n for n in names if n not in ("Q", "K", "V", "PK", "PQ", "MASK", "TABLE", "OUT")]
    return dict(zip(scalars, list(ints) + list(floats))), tuple(launch)


def flash_attention(q, k, v, pos_key, pos_query, mask, rel_table, q_scale: float, k_scale: float, pos_scale: float,
                    config=None, library: str | os.PathLike | None = None):
    """Context ``[B, S, H*D]`` in q's dtype through the launcher, on torch's current stream.
    ``config`` is ignored (the launch shape is compiled in); for ``check.run_gpu``'s launch signature."""
    import torch

    from .reference import dtype_name, op_dims

    dims = op_dims(q, k, v, pos_key, pos_query, mask, rel_table)
    tensors = {"q": q, "k": k, "v": v, "pos_key": pos_key, "pos_query": pos_query, "mask": mask,
               "rel_table": rel_table}
    tensors = {name: None if t is None else t.contiguous() for name, t in tensors.items()}
    out = torch.empty((dims.batch, dims.seq, dims.heads * dims.head_dim), dtype=q.dtype, device=q.device)
    pointers = {name: None if t is None else t.data_ptr() for name, t in tensors.items()}
    pointers["out"] = out.data_ptr()
    rows = (pos_key if pos_key is not None else pos_query).shape[1]
    code, why = call(load(library), dtype_name(q.dtype), pointers, int(rel_table.shape[0]),
                     (dims.batch, dims.heads, dims.seq, dims.head_dim, int(rows)), (q_scale, k_scale, pos_scale),
                     torch.cuda.current_stream(q.device).cuda_stream)
    if code != 0:
        raise DebertrtError(f"{ENTRY_POINT} failed (cudaError {code}): {why}")
    return out  # contiguous copies may be freed now: the allocator reuses them only after this stream's work
