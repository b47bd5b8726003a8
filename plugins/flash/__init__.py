"""DisentangledFlashAttention: DeBERTa's whole attention of one layer in one op, no S x S tensor.

Modules (heavy ones import torch / triton; nothing here is imported by ``debertrt.plugins``):

* ``reference``        the NumPy oracle and input validation (``op_dims``)
* ``torch_reference``  the same in plain torch tensor ops (CPU implementation of the torch op)
* ``kernel``           the Triton kernel and its launcher (GPU; CPU through TRITON_INTERPRET=1)
* ``op``               the ``debertrt::disentangled_flash_attention`` torch.library op
* ``hf``               the op's inputs from a transformers DeBERTa attention module; ``patched(model)``
* ``check``            the kernel's correctness matrices (interpreter on CPU, GPU)
* ``aot``              compile the kernel for sm_80 / sm_90 without a GPU: PTX, registers, shared memory
* ``bench``            the side-by-side attention benchmark (``scripts/bench_attention.py``)

The contract is ``debertrt.plugins.spec.DISENTANGLED_FLASH_ATTENTION``; see README.md here.
"""

_LAZY = {"patched": "hf", "disentangled_flash_attention": "op"}


def __getattr__(name: str):
    """``patched`` and ``disentangled_flash_attention`` at package level, importing torch only when asked."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
