"""The Python runtime: run an ``engine.plan`` built by ``debertrt engine`` on a CUDA GPU.

``engine.json`` (written beside the plan) is read and checked first, on any machine:
shapes outside the engine's optimization profiles are refused from it alone, before
TensorRT is imported or a byte reaches the GPU. Then, on first use, the TensorRT module
the engine was built with is imported (TensorRT or TensorRT-RTX), its version and the
plugin library are checked against engine.json, the plan is deserialized and inputs are
bound as torch CUDA tensors (NumPy arrays are copied in and the results copied back) and
run with ``execute_async_v3``, optionally replayed from a CUDA graph per shape.

    from debertrt.runtime import Engine

    with Engine("out/engine.plan") as engine:
        logits = engine.infer({"input_ids": ids, "attention_mask": mask})["logits"]
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from debertrt.core.errors import DebertrtError, InternalError
from debertrt.core.log import logger

from .engine_json import EngineMetadata
from .tensorrt import PLUGIN_LIBRARY_ENV, dtype_name, find_plugin_library, load_plugin_library, make_logger

# GPUs TensorRT-RTX runs on when the engine was built for its default targets
# (sm_80, sm_86, sm_89 and sm_120 onwards); data-centre Hopper/Blackwell (sm_90, sm_100) are not among them.
RTX_DEFAULT_CAPABILITIES = ((8, 0), (8, 6), (8, 9))
RTX_DEFAULT_MIN_LATEST = (12, 0)


def unavailable_reason(metadata: EngineMetadata) -> str | None:
    """Why this machine cannot run the engine (no TensorRT, no GPU, a GPU TensorRT-RTX refuses), or None."""
    fl = metadata.flavour
    if not fl.available():
        return f"{fl.title} is not installed ({fl.install})"
    try:
        import torch
    except ImportError:
        return "PyTorch is not installed (the runtime binds torch CUDA tensors)"
    if not torch.cuda.is_available():
        return "no CUDA GPU"
    if fl.ahead_of_time:
        major, minor = torch.cuda.get_device_capability()
        if not _rtx_runs_on(metadata, (major, minor)):
            name = torch.cuda.get_device_name()
            return f"TensorRT-RTX cannot run on this GPU ({name}, sm_{major}{minor})"
    return None


def _rtx_runs_on(metadata: EngineMetadata, capability: tuple[int, int]) -> bool:
    built = (metadata.data.get("builder") or {}).get("compute_capabilities")
    if built:
        return f"sm{capability[0]}{capability[1]}" in built
    return capability in RTX_DEFAULT_CAPABILITIES or capability >= RTX_DEFAULT_MIN_LATEST


_TORCH_DTYPES = {"float32": "float32", "float16": "float16", "bfloat16": "bfloat16", "int8": "int8",
                 "int32": "int32", "int64": "int64", "bool": "bool", "uint8": "uint8"}


def _torch_dtype(name: str):
    import torch

    if name not in _TORCH_DTYPES:
        raise DebertrtError(f"engine tensor dtype {name} has no torch equivalent")
    return getattr(torch, _TORCH_DTYPES[name])


class Engine:
    """A deserialized engine with one execution context. Cheap to construct (reads engine.json and
    checks the plan's hash); TensorRT and the GPU are touched on ``activate()`` or the first ``infer``.

    - plugin_library: for plugin engines (default: $DEBERTRT_PLUGIN_LIBRARY, the path recorded in
      engine.json, one beside the plan, build/plugins/ of this checkout)
    - cuda_graph: capture one CUDA graph per input shape and replay it (TensorRT-RTX: its built-in
      whole-graph capture)
    - device: CUDA device index (default: the current device)
    """

    def __init__(self, path: str | os.PathLike, plugin_library: str | os.PathLike | None = None,
                 cuda_graph: bool = False, device: int | None = None, verify: bool = True):
        self.metadata = EngineMetadata(path)
        if verify:
            self.metadata.read_plan()  # fail early on a corrupt or missing plan
        elif not self.metadata.plan_path.is_file():
            raise DebertrtError(f"{self.metadata.plan_path} not found: rebuild the engine")
        # plugin checks need no TensorRT: fail here, on any machine, rather than at activation
        self.plugin_library = self._plugin_library(plugin_library) if self.metadata.plugins else None
        self.cuda_graph = bool(cuda_graph)
        self.device = device
        self._context = None
        self._graphs: dict = {}
        self._dropped_noted: set[str] = set()

    # ---- lifecycle ----------------------------------------------------------------------

    def __enter__(self):
        self.activate()
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    @property
    def active(self) -> bool:
        return self._context is not None

    def activate(self) -> "Engine":
        if self.active:
            return self
        meta = self.metadata
        fl = meta.flavour
        trt = fl.load()
        if str(trt.__version__) != meta.version:
            raise DebertrtError(f"{meta.plan_path.name} was built with {fl.title} {meta.version} but {trt.__version__} "
                                f"is installed: engines only run on the version that built them; rebuild it")
        import torch

        if not torch.cuda.is_available():
            raise DebertrtError(f"{fl.title} engines need a CUDA GPU and none is visible")
        if self.device is not None:
            torch.cuda.set_device(self.device)
        reason = unavailable_reason(meta)
        if reason:
            raise DebertrtError(f"cannot run {meta.plan_path.name}: {reason}")
        self._torch_device = torch.device("cuda", torch.cuda.current_device())
        if meta.plugins:
            load_plugin_library(trt, self.plugin_library, meta.plugins, fl.title)

        self._logger = make_logger(trt, verbose=False)
        self._runtime = trt.Runtime(self._logger)
        engine = self._runtime.deserialize_cuda_engine(meta.read_plan())
        if engine is None:
            detail = self._logger.errors[-1] if self._logger.errors else "no message"
            raise DebertrtError(f"{fl.title} could not deserialize {meta.plan_path} ({detail}): the plan is corrupt "
                                f"or was built for another version or GPU; rebuild it")
        names = {engine.get_tensor_name(i) for i in range(engine.num_io_tensors)}
        if names != set(meta.input_names) | set(meta.output_names):
            raise DebertrtError(f"{meta.json_path.name} does not describe {meta.plan_path.name} (tensors "
                                f"{sorted(names)}): rebuild the engine")
        if engine.num_optimization_profiles != len(meta.profiles):
            raise DebertrtError(f"{meta.plan_path.name} has {engine.num_optimization_profiles} profiles, "
                                f"{meta.json_path.name} lists {len(meta.profiles)}: rebuild the engine")
        self._engine = engine
        self._dtypes = {n: dtype_name(engine.get_tensor_dtype(n)) for n in names}
        self._graph_mode = None
        if self.cuda_graph and fl.ahead_of_time and hasattr(engine, "create_runtime_config"):
            config = engine.create_runtime_config()
            config.cuda_graph_strategy = trt.CudaGraphStrategy.WHOLE_GRAPH_CAPTURE
            context = engine.create_execution_context(config)
            self._graph_mode = "tensorrt-rtx"
        else:
            context = engine.create_execution_context()
            self._graph_mode = "torch" if self.cuda_graph else None
        if context is None:
            raise DebertrtError(f"{fl.title} could not create an execution context (out of GPU memory?)")
        self._stream = torch.cuda.Stream(device=self._torch_device)
        self._profile = 0
        self._context = context
        return self

    def _plugin_library(self, explicit) -> Path:
        """Check every plugin op the engine uses against this debertrt's spec and find their library."""
        from debertrt.plugins import spec

        meta = self.metadata
        for plugin in meta.plugins:
            op = spec.OPS.get(plugin["name"])
            if op is None or (plugin["namespace"], plugin["version"]) != (op.plugin_namespace, op.plugin_version):
                provides = "; ".join(f"{o.op_type} {o.plugin_namespace!r} version {o.plugin_version}"
                                     for o in spec.OPS.values())
                raise DebertrtError(
                    f"{meta.plan_path.name} uses plugin {plugin['name']} {plugin['namespace']!r} version "
                    f"{plugin['version']}, this debertrt provides {provides}: rebuild the engine")
        recorded = (meta.plugin_library or {}).get("path")
        explicit = explicit or os.environ.get(PLUGIN_LIBRARY_ENV) or (
            recorded if recorded and Path(recorded).is_file() else None)
        return find_plugin_library(explicit, near=meta.plan_path.parent)

    def close(self) -> None:
        if self._context is None:
            return
        self._stream.synchronize()
        self._graphs.clear()
        self._context = None
        self._engine = None
        self._runtime = None

    # ---- inference ----------------------------------------------------------------------

    def check_inputs(self, feed: dict) -> int:
        """The profile for ``feed``'s shapes, from engine.json alone (no TensorRT, no GPU). Inputs the
        engine does not take (a tokenizer's ``token_type_ids`` for a model without token types) are
        left out, with a note logged once."""
        extra = sorted(set(feed) - set(self.metadata.input_names) - self._dropped_noted)
        if extra:
            logger.info("%s: the engine takes no %s; dropped from the feed", self.metadata.plan_path.name,
                        ", ".join(extra))
            self._dropped_noted.update(extra)
        return self.metadata.check_shapes({n: tuple(feed[n].shape) for n in self.metadata.input_names if n in feed})

    def infer(self, feed: dict) -> dict:
        """Run on ``feed`` (name -> NumPy array or torch tensor). NumPy in, NumPy out; torch in, torch
        CUDA tensors out. Shapes are checked against the profiles before any device work."""
        profile = self.check_inputs(feed)
        self.activate()
        import torch

        as_numpy = not any(isinstance(feed[n], torch.Tensor) for n in self.metadata.input_names)
        inputs = {}
        for name in self.metadata.input_names:
            value = feed[name]
            tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(value))
            inputs[name] = tensor.to(device=self._torch_device, dtype=_torch_dtype(self._dtypes[name]),
                                     non_blocking=True).contiguous()
        with torch.cuda.device(self._torch_device):
            # inputs were enqueued on the current stream; ours waits for them
            self._stream.wait_stream(torch.cuda.current_stream())
            if self._graph_mode == "torch":
                outputs = self._run_graph(profile, inputs)
            else:
                outputs = self._run(profile, inputs)
            torch.cuda.current_stream().wait_stream(self._stream)
            for t in list(inputs.values()) + list(outputs.values()):
                t.record_stream(self._stream)
        if as_numpy:
            return {name: t.cpu().numpy() for name, t in outputs.items()}
        return outputs

    def _bind(self, profile: int, inputs: dict) -> dict:
        import torch

        context = self._context
        if profile != self._profile:
            context.set_optimization_profile_async(profile, self._stream.cuda_stream)
            self._profile = profile
        for name, tensor in inputs.items():
            if not context.set_input_shape(name, tuple(tensor.shape)):
                raise DebertrtError(f"TensorRT refused shape {list(tensor.shape)} for input {name}")
            context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.metadata.output_names:
            shape = tuple(context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise InternalError(f"output {name} has an unresolved shape {shape} after setting the inputs")
            outputs[name] = torch.empty(shape, dtype=_torch_dtype(self._dtypes[name]), device=self._torch_device)
            context.set_tensor_address(name, outputs[name].data_ptr())
        return outputs

    def _run(self, profile: int, inputs: dict) -> dict:
        outputs = self._bind(profile, inputs)
        if not self._context.execute_async_v3(self._stream.cuda_stream):
            raise DebertrtError(f"{self.metadata.flavour.title} failed to run {self.metadata.plan_path.name}"
                                f"{': ' + self._logger.errors[-1] if self._logger.errors else ''}")
        return outputs

    def _run_graph(self, profile: int, inputs: dict) -> dict:
        """One CUDA graph per (profile, shapes), capturing execute_async_v3 over static buffers."""
        import torch

        key = (profile,) + tuple(tuple(t.shape) for t in inputs.values())
        entry = self._graphs.get(key)
        if entry is None:
            static_in = {name: t.clone() for name, t in inputs.items()}
            static_out = self._bind(profile, static_in)
            # one plain run first: TensorRT finishes deferred shape work outside capture
            if not self._context.execute_async_v3(self._stream.cuda_stream):
                raise DebertrtError(f"{self.metadata.flavour.title} failed to run {self.metadata.plan_path.name}")
            capturable = getattr(self._context, "is_stream_capturable", None)
            if capturable is not None and not capturable(self._stream.cuda_stream):
                self._graph_mode = None  # this engine cannot be captured: run it plainly from now on
                return static_out
            self._stream.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, stream=self._stream):
                self._context.execute_async_v3(self._stream.cuda_stream)
            entry = self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = entry
        with torch.cuda.stream(self._stream):
            for name, tensor in inputs.items():
                static_in[name].copy_(tensor, non_blocking=True)
            graph.replay()
            return {name: t.clone() for name, t in static_out.items()}
