"""Side-by-side GPU benchmark of DeBERTa attention implementations (``scripts/bench_attention.py``).

Shape: v3-base (12 heads, head dim 64, 256 log buckets, max_relative_positions 512, c2p + p2c),
fp16, no padding, (B, S) in {(8, 128), (8, 512), (4, 2048), (1, 8192)}. Two levels:

* ``attention``: per-head q, k, v and projected positional tables -> context.
  ``ours`` (the ``debertrt::disentangled_flash_attention`` op, Triton kernel), ``hf-eager``
  (transformers' v2/v3 attention arithmetic: bmm, gathers, masked_fill, softmax, bmm),
  ``hf-compile`` (torch.compile of it), ``flashdeberta`` (its ``flash_attention_with_disentangled``),
  ``gather-plugin`` (torch GEMMs + our DisentangledAttention CUDA kernel + softmax + bmm;
  needs ``libdebertrt_kernels.so``).
* ``module``: a transformers ``DisentangledSelfAttention`` forward from hidden states
  (projections included) with the same weights: ``hf-eager``, ``flashdeberta``,
  ``disentangled-flash``, ``ours`` (``hf.patched``).

TFLOP/s is QK+PV-equivalent, 4 * B * H * S^2 * D / time, at both levels. Times are CUDA-event
medians. Each peer's output is compared with ``ours`` (max |diff|) at every shape, so a peer
computing something else is visible. A peer that is not installed or fails is skipped with
its reason. Exit: 0 ran, 2 no CUDA.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import sys
import time
from pathlib import Path

SHAPES = ((8, 128), (8, 512), (4, 2048), (1, 8192))
HEADS, HEAD_DIM, BUCKETS, MAX_REL = 12, 64, 256, 512


def flops(batch: int, seq: int, heads: int = HEADS, head_dim: int = HEAD_DIM) -> float:
    """QK + PV-equivalent floating-point operations: 4 * B * H * S^2 * D."""
    return 4.0 * batch * heads * seq * seq * head_dim


def hf_eager_attention(q, k, v, pos_key, pos_query, extended_mask, relative_pos, span: int):
    """transformers 5.x v2/v3 ``DisentangledSelfAttention`` arithmetic on [B*H, S, D] tensors (heads first)."""
    import torch

    scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float) * 3)
    scores = torch.bmm(q, k.transpose(-1, -2) / scale.to(dtype=q.dtype))
    index = torch.clamp(relative_pos + span, 0, span * 2 - 1).squeeze(0).expand(q.size(0), q.size(1), q.size(1))
    c2p = torch.gather(torch.bmm(q, pos_key.transpose(-1, -2)), dim=-1, index=index)
    p2c_index = torch.clamp(-relative_pos + span, 0, span * 2 - 1).squeeze(0).expand(q.size(0), q.size(1), q.size(1))
    p2c = torch.gather(torch.bmm(k, pos_query.transpose(-1, -2)), dim=-1, index=p2c_index).transpose(-1, -2)
    scores = scores + c2p / scale.to(dtype=c2p.dtype) + p2c / scale.to(dtype=p2c.dtype)
    batch = extended_mask.size(0)
    scores = scores.view(batch, -1, scores.size(-2), scores.size(-1))
    scores = scores.masked_fill(~extended_mask.bool(), torch.finfo(q.dtype).min)
    probs = torch.softmax(scores, dim=-1)
    context = torch.bmm(probs.view(-1, probs.size(-2), probs.size(-1)), v)
    return context.view(batch, -1, context.size(-2), context.size(-1)).permute(0, 2, 1, 3).reshape(batch, q.size(1), -1)


class Skip(Exception):
    """A peer that cannot run here; the message says why."""


def v3_base_attention(device, dtype):
    """transformers' v3-base attention module with random weights, its rel_embeddings and layer facts."""
    import torch
    from transformers import AutoConfig
    from transformers.models.deberta_v2.modeling_deberta_v2 import DisentangledSelfAttention

    config = AutoConfig.for_model("deberta-v2", hidden_size=HEADS * HEAD_DIM, num_attention_heads=HEADS,
                                  relative_attention=True, pos_att_type=["c2p", "p2c"], position_buckets=BUCKETS,
                                  max_relative_positions=MAX_REL, share_att_key=True, max_position_embeddings=512)
    torch.manual_seed(0)
    module = DisentangledSelfAttention(config).eval().to(device, dtype)
    rel_embeddings = torch.randn(2 * BUCKETS, config.hidden_size, device=device, dtype=dtype)
    return config, module, rel_embeddings


def _peer_module(name: str, config, reference_module):
    """A peer's attention module with ``reference_module``'s weights (both subclass transformers' module)."""
    try:
        if name == "flashdeberta":
            from flashdeberta.model import FlashDisentangledSelfAttention as peer_class
        else:
            from disentangled_flash import DisentangledFlashAttention as peer_class
    except ImportError as exc:
        raise Skip(f"{name} not importable ({exc}); carry its wheel in .whl/") from exc
    module = peer_class(config)
    try:
        module.load_state_dict(reference_module.state_dict(), strict=True)
    except RuntimeError as exc:
        raise Skip(f"{name}: weights do not load: {str(exc).splitlines()[0][:150]}") from exc
    p = next(reference_module.parameters())
    return module.eval().to(p.device, p.dtype).requires_grad_(False)


def build_cases(batch: int, seq: int, device, dtype, modules, kernel_library, use_compile: bool, configs, stack):
    """{(level, peer): callable or Skip} for one shape; ``stack`` (an ExitStack) holds the patch of ``ours``."""
    import torch

    from ..reference import relative_position_table
    from . import hf, kernel, op

    config, module, rel_embeddings = modules
    hidden = torch.randn(batch, seq, config.hidden_size, device=device, dtype=dtype)
    mask = torch.ones(batch, seq, device=device, dtype=torch.int32)
    with torch.no_grad():
        inputs = hf.op_inputs(module, hidden, rel_embeddings)
    facts = hf.layer_facts(module)
    table = torch.from_numpy(relative_position_table(BUCKETS, MAX_REL, seq)).to(device)
    q, k, v, pk, pq = (inputs[n].contiguous() for n in ("q", "k", "v", "pos_key", "pos_query"))
    cases = {("attention", "ours"): lambda: op.disentangled_flash_attention(q, k, v, pk, pq, mask, table,
                                                                           **facts.scales())}
    for cfg in configs:
        name = f"ours[{cfg.block_m}x{cfg.block_n}w{cfg.num_warps}s{cfg.num_stages}]"
        cases[("attention", name)] = (lambda c=cfg: kernel.flash_attention(q, k, v, pk, pq, mask, table,
                                                                           **facts.scales(), config=c))
    heads_first = [t.reshape(-1, seq, HEAD_DIM) for t in (q, k, v)]
    pos3 = [t.repeat(batch, 1, 1) for t in (pk, pq)]
    extended = (mask[:, None, :, None] * mask[:, None, None, :]).bool()
    relative_pos = table.to(torch.long)[torch.arange(seq, device=device)[:, None]
                                        - torch.arange(seq, device=device)[None, :] + seq - 1][None]
    eager_args = (*heads_first, *pos3, extended, relative_pos, facts.span)
    cases[("attention", "hf-eager")] = lambda: hf_eager_attention(*eager_args)
    if use_compile:
        compiled = torch.compile(hf_eager_attention, dynamic=False)
        cases[("attention", "hf-compile")] = lambda: compiled(*eager_args)
    cases[("attention", "flashdeberta")] = _flashdeberta_op(q, k, v, pk, pq, batch, seq, device)
    cases[("attention", "gather-plugin")] = _gather_plugin(q, k, v, pk, pq, mask, table, facts, kernel_library)
    ext4 = extended.to(torch.int32)
    cases[("module", "hf-eager")] = lambda: module(hidden, ext4, relative_pos=relative_pos,
                                                   rel_embeddings=rel_embeddings)[0]
    for peer in ("flashdeberta", "disentangled-flash"):
        try:
            other = _peer_module(peer, config, module)
            cases[("module", peer)] = (lambda m=other: m(hidden, mask, rel_embeddings=rel_embeddings)[0])
        except Skip as exc:
            cases[("module", peer)] = exc
    ours_module = copy.deepcopy(module)
    stack.enter_context(hf.patched(torch.nn.ModuleList([ours_module]).eval()))
    cases[("module", "ours")] = lambda: ours_module(hidden, mask, rel_embeddings=rel_embeddings)[0]
    return cases


def _flashdeberta_op(q, k, v, pk, pq, batch, seq, device):
    import torch

    try:
        from flashdeberta.ops.flash_attention import flash_attention_with_disentangled
    except ImportError as exc:
        return Skip(f"flashdeberta not importable ({exc}); carry its wheel in .whl/")
    lengths = torch.full((batch,), seq, dtype=torch.int32, device=device)
    scale = 1.0 / math.sqrt(HEAD_DIM * 3)

    def run():
        out = flash_attention_with_disentangled(q, k, v, lengths, pk[None], pq[None], False, scale, BUCKETS, MAX_REL)
        return out.permute(0, 2, 1, 3).reshape(batch, seq, -1)

    return run


def _gather_plugin(q, k, v, pk, pq, mask, table, facts, kernel_library):
    """torch GEMMs for c2c/c2p/p2c, our DisentangledAttention CUDA kernel, masked softmax, bmm."""
    import torch

    from .. import cuda_kernel

    if kernel_library is None:
        return Skip("no libdebertrt_kernels.so (pass --kernel-library; scripts/gpu_check.sh builds it)")
    library = cuda_kernel.load_kernel_library(kernel_library)
    batch, heads, seq, _ = q.shape
    keep = (mask != 0)[:, None, None, :]

    def run():
        c2c = torch.matmul(q, k.transpose(-1, -2)) * facts.k_scale
        scores = cuda_kernel.disentangled_attention(c2c, torch.matmul(q, pk.transpose(-1, -2)),
                                                    torch.matmul(k, pq.transpose(-1, -2)), table, facts.pos_scale,
                                                    library=library)
        probs = torch.softmax(scores.masked_fill(~keep, torch.finfo(q.dtype).min).float(), dim=-1).to(q.dtype)
        return torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(batch, seq, -1)

    return run


def run(shapes=SHAPES, kernel_library=None, use_compile=True, warmup=5, iters=20, configs=(), log=print) -> dict:
    import torch

    from ..kernel_check import environment, time_cuda

    device, dtype = torch.device("cuda"), torch.float16
    modules = v3_base_attention(device, dtype)
    rows = []
    for batch, seq in shapes:
        with torch.no_grad(), contextlib.ExitStack() as stack:
            cases = build_cases(batch, seq, device, dtype, modules, kernel_library, use_compile, configs, stack)
            reference_out = cases[("attention", "ours")]().float()
            for (level, peer), fn in cases.items():
                row = {"level": level, "peer": peer, "batch": batch, "seq": seq, "ms": None, "tflops": None}
                if isinstance(fn, Skip):
                    row["status"] = f"skipped: {fn}"
                else:
                    try:
                        t0 = time.perf_counter()
                        out = fn()
                        torch.cuda.synchronize()
                        row["first_call_s"] = round(time.perf_counter() - t0, 2)
                        row["max_abs_diff_vs_ours"] = float((out.float() - reference_out).abs().max())
                        del out
                        row["ms"] = time_cuda(fn, warmup, iters)
                        row["tflops"] = flops(batch, seq) / (row["ms"] * 1e-3) / 1e12
                        row["status"] = "ran"
                    except Exception as exc:  # one peer failing (memory, API) must not end the run
                        row["status"] = f"failed: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                rows.append(row)
                log(f"  B={batch} S={seq} {level:9} {peer:22} {row['status'] if row['ms'] is None else ''}"
                    + (f"{row['ms']:.3f} ms {row['tflops']:.1f} TFLOP/s" if row["ms"] is not None else ""))
            del cases
            torch.cuda.empty_cache()
    return {"environment": environment(torch), "dtype": "float16", "heads": HEADS, "head_dim": HEAD_DIM,
            "position_buckets": BUCKETS, "max_relative_positions": MAX_REL, "rows": rows}


def table(report: dict) -> list[str]:
    shapes = sorted({(r["batch"], r["seq"]) for r in report["rows"]}, key=lambda s: s[1])
    lines = [f"{'level':9} {'peer':22} " + " ".join(f"{f'B={b} S={s}':>22}" for b, s in shapes),
             f"{'':32} " + " ".join(f"{'ms':>10} {'TFLOP/s':>11}" for _ in shapes)]
    peers = list(dict.fromkeys((r["level"], r["peer"]) for r in report["rows"]))
    for level, peer in peers:
        cells = []
        for b, s in shapes:
            row = next((r for r in report["rows"] if (r["level"], r["peer"], r["batch"], r["seq"]) ==
                        (level, peer, b, s)), None)
            cells.append(f"{row['ms']:10.3f} {row['tflops']:11.1f}" if row and row["ms"] is not None
                         else f"{(row or {}).get('status', '-')[:22]:>22}")
        lines.append(f"{level:9} {peer:22} " + " ".join(cells))
    return lines


def parse_config(text: str):
    """'64x64:8:2' -> KernelConfig(64, 64, num_warps=8, num_stages=2)."""
    from .kernel import KernelConfig

    try:
        tiles, warps, stages = text.split(":")
        block_m, block_n = (int(x) for x in tiles.split("x"))
        return KernelConfig(block_m, block_n, int(warps), int(stages))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--config wants BMxBN:WARPS:STAGES (e.g. 64x64:8:2), got {text!r}") from exc


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, default=Path("debertrt-out/bench_attention.json"))
    parser.add_argument("--kernel-library", type=Path, help="libdebertrt_kernels.so for the gather-plugin peer")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile peer")
    parser.add_argument("--config", type=parse_config, action="append", default=[],
                        help="also time our kernel with BMxBN:WARPS:STAGES (repeatable)")
    parser.add_argument("--shapes", default=",".join(f"{b}x{s}" for b, s in SHAPES), help="BxS,BxS,...")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        shapes = [tuple(int(x) for x in item.split("x")) for item in args.shapes.split(",")]
    except ValueError:
        parser.error(f"--shapes wants BxS,BxS,... (e.g. 8x512), got {args.shapes!r}")
    import torch

    if not torch.cuda.is_available():
        print("bench_attention: no CUDA device visible to torch: this benchmark needs a GPU", file=sys.stderr)
        return 2
    report = run(shapes, args.kernel_library, not args.no_compile, args.warmup, args.iters, args.config)
    lines = table(report)
    print("\n".join(lines))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_name(f".{args.json.name}.tmp")
    tmp.write_text(json.dumps(report, indent=1))
    tmp.replace(args.json)
    print(f"wrote {args.json}")
    return 0
