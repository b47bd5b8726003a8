"""Call the DisentangledAttention CUDA kernel through its C entry point (ctypes, torch CUDA tensors).

What tests and benchmarks use where TensorRT is absent; the library comes from
:mod:`debertrt.plugins.libraries` and the NumPy oracle stays in :mod:`debertrt.plugins.reference`.
"""

from __future__ import annotations

import ctypes
import math
import os
from pathlib import Path

from .libraries import find_kernel_library, load_library

ENTRY_POINT = "debertrt_disentangled_attention"
#: DEBERTRT_KERNEL_ABI_VERSION of disentangled_attention_kernel.cuh this binding speaks.
ABI_VERSION = 1
#: DEBERTRT_DTYPE_* codes of the C entry point.
DTYPE_CODES = {"float32": 0, "float16": 1, "bfloat16": 2}


class KernelError(RuntimeError):
    """The kernel library refused the arguments or the launch failed."""


# ---- ctypes binding --------------------------------------------------------------------------


def load_kernel_library(path: str | os.PathLike | None = None) -> ctypes.CDLL:
    """ctypes handle on the kernel library (located or built by :func:`find_kernel_library`)."""
    return load_library(Path(path) if path is not None else find_kernel_library(), _bind_kernel_library)


def _bind_kernel_library(lib: ctypes.CDLL, path: Path) -> None:
    try:
        entry = getattr(lib, ENTRY_POINT)
    except AttributeError:
        raise KernelError(f"{path} does not export {ENTRY_POINT}") from None
    entry.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
                      ctypes.c_int, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_int, ctypes.c_int,
                      ctypes.c_float, ctypes.c_void_p]
    entry.restype = ctypes.c_int
    lib.debertrt_kernel_abi_version.argtypes = []
    lib.debertrt_kernel_abi_version.restype = ctypes.c_int
    lib.debertrt_error_string.argtypes = [ctypes.c_int]
    lib.debertrt_error_string.restype = ctypes.c_char_p
    abi = lib.debertrt_kernel_abi_version()
    if abi != ABI_VERSION:
        raise KernelError(f"{path} speaks kernel ABI {abi}, this binding speaks {ABI_VERSION}: rebuild it")


def _import_torch():
    try:
        import torch
    except ImportError:
        raise ImportError("debertrt.plugins.cuda_kernel.disentangled_attention needs PyTorch "
                          "(pip install torch)") from None
    return torch


def _check_inputs(torch, c2c, c2p, p2c, rel_table, out):
    """Validate like the kernel's contract; returns (rows, sq, sk, span)."""
    if not isinstance(c2c, torch.Tensor):
        raise TypeError(f"c2c must be a torch.Tensor, got {type(c2c).__name__}")
    if c2p is None and p2c is None:
        raise ValueError("DisentangledAttention needs at least one of c2p and p2c")
    if rel_table is None:
        raise TypeError("rel_table must be a 1-D int32 torch tensor (reference.relative_position_table)")
    named = [("c2c", c2c), ("c2p", c2p), ("p2c", p2c), ("rel_table", rel_table), ("out", out)]
    for name, tensor in named:
        if tensor is None:
            continue
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(tensor).__name__}")
        if tensor.device.type != "cuda":
            raise ValueError(f"{name} must be a CUDA tensor, got one on {tensor.device}")
        if tensor.device != c2c.device:
            raise ValueError(f"{name} is on {tensor.device} but c2c is on {c2c.device}")
        if not tensor.is_contiguous():
            raise ValueError(f"{name} must be contiguous (call .contiguous())")
    if c2c.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"c2c must be float32, float16 or bfloat16, got {c2c.dtype}")
    for name, tensor in (("c2p", c2p), ("p2c", p2c), ("out", out)):
        if tensor is not None and tensor.dtype != c2c.dtype:
            raise TypeError(f"{name} is {tensor.dtype} but c2c is {c2c.dtype}: all float tensors must share one dtype")
    if rel_table.dtype != torch.int32 or rel_table.dim() != 1 or rel_table.numel() < 1:
        raise TypeError("rel_table must be a non-empty 1-D int32 tensor, "
                        f"got {rel_table.dtype} {tuple(rel_table.shape)}")
    if c2c.dim() < 2:
        raise ValueError(f"c2c must be [..., Sq, Sk], got shape {tuple(c2c.shape)}")
    lead, (sq, sk) = tuple(c2c.shape[:-2]), tuple(c2c.shape[-2:])
    width = None
    for name, tensor, rows in (("c2p", c2p, sq), ("p2c", p2c, sk)):
        if tensor is None:
            continue
        if tensor.dim() != c2c.dim() or tuple(tensor.shape[:-1]) != lead + (rows,):
            want = "[..., Sq, 2*span]" if name == "c2p" else "[..., Sk, 2*span]"
            raise ValueError(f"{name} has shape {tuple(tensor.shape)}, want {want} with c2c {tuple(c2c.shape)}")
        w = tensor.shape[-1]
        if w < 2 or w % 2:
            raise ValueError(f"{name} needs an even last dimension >= 2 (2*span), got {w}")
        if width is not None and w != width:
            raise ValueError(f"c2p and p2c last dimensions differ ({width} vs {w})")
        width = w
    smax = (rel_table.numel() + 1) // 2
    if max(sq, sk) > smax:
        raise ValueError(f"sequence length {max(sq, sk)} exceeds the relative-position table ({smax})")
    if out is not None:
        if tuple(out.shape) != tuple(c2c.shape):
            raise ValueError(f"out has shape {tuple(out.shape)}, want c2c's {tuple(c2c.shape)}")
        for name, tensor in (("c2p", c2p), ("p2c", p2c)):
            if tensor is not None and tensor.numel() and out.numel() and _overlaps(out, tensor):
                raise ValueError(f"out must not overlap {name} (out may be c2c itself)")
        if out.numel() and _overlaps(out, c2c) and out.data_ptr() != c2c.data_ptr():
            raise ValueError("out partially overlaps c2c (out may be c2c itself, nothing else)")
    limit = 2**31 - 1
    if sq > limit or sk > limit or width // 2 > limit:
        raise ValueError("a dimension exceeds the kernel's int32 range")
    return math.prod(lead), sq, sk, width // 2


def _overlaps(a, b) -> bool:
    a0, a1 = a.data_ptr(), a.data_ptr() + a.numel() * a.element_size()
    b0, b1 = b.data_ptr(), b.data_ptr() + b.numel() * b.element_size()
    return a0 < b1 and b0 < a1


def disentangled_attention(c2c, c2p, p2c, rel_table, pos_scale: float = 1.0, out=None, *, library=None, stream=None):
    """``out = c2c + pos_scale * (c2p[..., i, delta] + p2c[..., j, delta])`` on the GPU.

    Tensors: torch CUDA, contiguous, on one device; c2c/c2p/p2c/out float32, float16 or
    bfloat16 (one dtype); rel_table int32 ``[2*Smax - 1]`` (see ``reference.relative_position_table``).
    c2p or p2c may be None. ``out`` defaults to a new tensor; it may be ``c2c`` (in place).
    ``library``: a path or ctypes handle of libdebertrt_kernels.so (default: located/built).
    ``stream``: a ``torch.cuda.Stream`` or raw handle (default: the current stream).
    Raises TypeError/ValueError on bad arguments, :class:`KernelError` if the launch fails.
    """
    torch = _import_torch()
    rows, sq, sk, span = _check_inputs(torch, c2c, c2p, p2c, rel_table, out)
    if out is None:
        out = torch.empty_like(c2c)
    if rows == 0 or sq == 0 or sk == 0:
        return out
    lib = library if isinstance(library, ctypes.CDLL) else load_kernel_library(library)
    code = DTYPE_CODES[str(c2c.dtype).replace("torch.", "")]
    with torch.cuda.device(c2c.device):
        if stream is None:
            handle = torch.cuda.current_stream(c2c.device).cuda_stream
        else:
            handle = getattr(stream, "cuda_stream", stream)
        rc = lib.debertrt_disentangled_attention(
            code, c2c.data_ptr(), c2p.data_ptr() if c2p is not None else None,
            p2c.data_ptr() if p2c is not None else None, rel_table.data_ptr(), rel_table.numel(), out.data_ptr(),
            rows, sq, sk, span, float(pos_scale), handle)
    if rc != 0:
        message = lib.debertrt_error_string(rc)
        raise KernelError(f"{ENTRY_POINT} failed: {message.decode() if message else 'unknown error'} (cudaError {rc})")
    return out
