"""Compiled graphs kept on disk between launches, for ``--compile``: each forward the stream compiles is traced and
compiled whole ahead of its first call (torch's ``aot_compile``), saved in the precompiled folder, and loaded from
there by later launches. Inductor's own cache keeps the kernels but not dynamo's trace, which each launch redid: on
an H200 a second launch's first frame took 39.7 s (218.7 s cold; 1.9 s once compiled within a launch).

The folder is ``$THEMATRIX_PRECOMPILED_DIR``, or ``~/.cache/thematrix/precompiled``; an empty variable turns the
saving off (``torch.compile`` then traces at each launch, as before). A saved graph is used only where the code it
traced is unchanged and its guards accept the inputs; otherwise it is compiled again and overwritten. A forward
whose graph torch refuses to save is compiled as before, traced at each launch, with a warning that says why (torchao's
FP8 blocks were, until the guards on parameters were left out: ``savable_guards``).
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import linecache
import logging
import os
import re
import time
import types
import weakref
from pathlib import Path

import torch
from torch._prims_common import suggest_memory_format
from torch.utils._pytree import tree_flatten, tree_unflatten

logger = logging.getLogger(__name__)

PRECOMPILED_DIR_VARIABLE = "THEMATRIX_PRECOMPILED_DIR"
DEFAULT_PRECOMPILED_DIR = Path("~/.cache/thematrix/precompiled")
# How dynamo names a module's parameter or buffer in a guard, e.g. self._modules['attn1']._parameters['weight']
MODULE_TENSOR_SOURCE = re.compile(r"\._(parameters|buffers)\[")


def precompiled_dir() -> Path | None:
    """Where compiled graphs are kept, or None where this torch cannot save them or the variable is set empty."""
    if not hasattr(torch.compiler, "load_compiled_function"):
        return None
    folder = os.environ.get(PRECOMPILED_DIR_VARIABLE, str(DEFAULT_PRECOMPILED_DIR))
    return Path(folder).expanduser() if folder else None


def tensor_signature(value) -> tuple:
    """What a graph compiled with ``dynamic=False`` specializes on, for a tensor; the value itself otherwise."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.stride(), value.dtype, str(value.device), value.requires_grad)
    return (type(value).__qualname__, value if isinstance(value, (int, float, bool, str, type(None))) else None)


def canonical_layout(value, memory_format: torch.memory_format | None = None):
    """``value`` laid out as a new tensor of ``memory_format`` (for a 5-D tensor; otherwise of its own suggested
    format) would be: one graph then serves inputs that differ only in layout. The VAE's inputs do: slices of latents
    permuted or concatenated, in either format, and convolution caches sliced from batches of other lengths, whose
    strides differ where a dimension has size 1. A view where ``value`` is dense in that format (the size-1
    dimensions' strides are never used), else a copy."""
    if not isinstance(value, torch.Tensor) or value.layout != torch.strided:
        return value
    if memory_format is None or value.dim() != 5:
        memory_format = suggest_memory_format(value)
    if not value.is_contiguous(memory_format=memory_format):
        return value.contiguous(memory_format=memory_format)
    strides = torch.empty_like(value, device="meta", memory_format=memory_format).stride()
    return value if value.stride() == strides else value.as_strided(value.shape, strides)


def module_signature(module: torch.nn.Module) -> tuple:
    """The class of ``module`` and its parameters' and buffers' names, types, shapes, strides, dtypes, devices and
    whether they need gradients: what the guards on them, left out of saved graphs (``savable_guards``), checked."""
    tensors = (*module.named_parameters(), *module.named_buffers())
    return (
        f"{type(module).__module__}.{type(module).__qualname__}",
        tuple((name, type(value).__qualname__, *tensor_signature(value)) for name, value in tensors),
    )


def device_names(signature: tuple) -> tuple[str, ...]:
    """The GPUs the inputs are on, by model name: a graph's kernels are tuned for one."""
    devices = {leaf for leaf in tree_flatten(signature)[0] if isinstance(leaf, str) and leaf.startswith("cuda")}
    return tuple(sorted(torch.cuda.get_device_name(torch.device(device)) for device in devices))


def sources_unchanged(graph) -> bool:
    """Whether every source line the saved ``graph`` traced reads the same now."""
    linecache.checkcache()
    for source in graph.source_info().inlined_sources:
        lines = inspect.getsourcelines(importlib.import_module(source.module))[0]
        text = "".join(lines[source.firstlineno - 1 : source.lastlineno - 1])
        if hashlib.sha256(text.encode()).hexdigest() != source.checksum:
            return False
    return True


def savable_guards(guards) -> list[bool]:
    """Which of a graph's guards it keeps: not those on object identities or globals, which no file can hold (as
    torch's own default for saved graphs). Among them, diffusers' attention checks which arguments its processor
    takes (``inspect.signature``), guarding the identity of the processor's code: ``sources_unchanged`` checks
    that code's text instead, when the graph loads. Nor those on the module's parameters and buffers, whose
    signatures key the graph's file (``module_signature``): torch would pickle a meta copy of each, which tensor
    subclasses such as torchao's FP8 weights cannot make."""
    unsavable = set(torch._dynamo.guards.CheckFunctionManager.UNSUPPORTED_SERIALIZATION_GUARD_TYPES)
    return [
        not (
            guard.is_global
            or guard.guard_type in unsavable
            or unsavable.intersection(guard.derived_guard_types)
            or MODULE_TENSOR_SOURCE.search(guard.name)
        )
        for guard in guards
    ]


# What a saved graph compiles with: only the guards a file can hold.
SAVING_OPTIONS = {"guard_filter_fn": savable_guards}


def is_precompiled(module: torch.nn.Module) -> bool:
    """Whether ``module``'s forward was installed by a ``PrecompiledForward``."""
    return isinstance(getattr(vars(module).get("forward"), "__func__", None), PrecompiledForward)


class PrecompiledForward:
    """A module class's ``forward``, compiled whole (``fullgraph``, ``dynamic=False``) for each input signature it
    meets, each graph saved in ``folder`` and loaded from there by later launches. One instance serves every module
    of the class (``install``): modules of one shape share one graph, as regional compilation's do. With
    ``video_memory_format``, every 5-D input is given that layout first (``canonical_layout``): the one the module
    computes in, so that inputs arriving in either layout share a graph."""

    def __init__(
        self,
        forward,
        folder: Path,
        backend: str,
        options: dict | None = None,
        video_memory_format: torch.memory_format | None = None,
    ):
        self.forward = forward
        self.folder = folder
        self.backend = backend
        self.options = options
        self.video_memory_format = video_memory_format
        self.graphs: dict[tuple, list] = {}  # an input signature's graphs, each with its own guards
        self.module_signatures: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self.compiled = self.loaded = 0  # graphs this launch compiled and loaded
        # A saved graph's guards pickle the module, and with it this forward as a method: by this name, as the
        # class's own forward, whose place it takes.
        self.__name__ = "forward"

    def install(self, module: torch.nn.Module) -> None:
        module.forward = types.MethodType(self, module)

    def __call__(self, module: torch.nn.Module, *args, **kwargs):
        if module not in self.module_signatures:
            self.module_signatures[module] = module_signature(module)
        leaves, structure = tree_flatten((args, kwargs))
        leaves = [canonical_layout(leaf, self.video_memory_format) for leaf in leaves]
        args, kwargs = tree_unflatten(leaves, structure)
        key = (
            self.module_signatures[module],
            str(structure),
            tuple(tensor_signature(leaf) for leaf in leaves),
            torch.is_grad_enabled(),
            torch.is_inference_mode_enabled(),
        )
        graphs = self.graphs.setdefault(key, [])
        for graph in graphs:
            if graph.guard_check(module, *args, **kwargs):
                return graph(module, *args, **kwargs)
        # None yet, or the module's state changed under the guards (e.g. its attention processor): one more graph.
        graph = self.load_or_compile(key, module, args, kwargs, from_disk=not graphs)
        graphs.append(graph)
        return graph(module, *args, **kwargs)

    def path(self, key: tuple) -> Path:
        """The graph's file: named by the forward, keyed by its inputs, the compile settings and the software."""
        identity = (key, self.backend, sorted((self.options or {}).items()), torch.__version__, device_names(key))
        digest = hashlib.sha256(repr(identity).encode()).hexdigest()[:24]
        return self.folder / f"{self.forward.__qualname__}-{digest}.bin"

    def load_or_compile(self, key: tuple, module, args, kwargs, from_disk: bool):
        """The graph saved for ``key`` if it still fits, else one compiled now and saved over it. Its guards are
        checked by ``__call__``, before choosing it, and not again by the graph."""
        path = self.path(key)
        start = time.perf_counter()
        if from_disk and path.exists():
            try:
                with path.open("rb") as file:
                    graph = torch.compiler.load_compiled_function(file)
                if sources_unchanged(graph) and graph.guard_check(module, *args, **kwargs):
                    graph.disable_guard_check()
                    self.loaded += 1
                    logger.info(
                        "loaded the compiled %s from %s in %.1f s",
                        self.forward.__qualname__,
                        path,
                        time.perf_counter() - start,
                    )
                    return graph
                logger.info("%s is stale (the code changed or its guards reject the inputs)", path)
            except Exception as error:  # a package another torch or machine wrote: compile it again
                logger.info("could not load %s (%s: %s)", path, type(error).__name__, error)
        settings = dict(fullgraph=True, dynamic=False, backend=self.backend)
        try:
            # A new options dict each time: torch.compile pops the guard filter out of the dict it is given.
            with torch._dynamo.config.patch(enable_aot_compile=True):  # off by default before torch 2.13
                saving = torch.compile(self.forward, **settings, options=dict(self.options or {}, **SAVING_OPTIONS))
            graph = saving.aot_compile(((module, *args), kwargs))
        except Exception as error:  # e.g. tensor subclasses this torch cannot save: traced again at each launch
            logger.warning(
                "%s compiles without being saved (%s: %s)", self.forward.__qualname__, type(error).__name__, error
            )
            # dynamo's own guards, all of them: the filter above is for saved graphs, which check their sources
            return TracedEachLaunch(torch.compile(self.forward, **settings, options=self.options))
        graph.disable_guard_check()
        self.compiled += 1
        path.parent.mkdir(parents=True, exist_ok=True)
        # Written aside, then renamed: a launch sharing the folder never reads a half-written file.
        partial = path.with_name(f"{path.name}.{os.getpid()}.partial")
        graph.save_compiled_function(str(partial))
        os.replace(partial, path)
        logger.info("compiled %s in %.1f s, saved to %s", self.forward.__qualname__, time.perf_counter() - start, path)
        return graph


class TracedEachLaunch:
    """A forward ``torch.compile`` traces at each launch, for what ``aot_compile`` cannot take: dynamo's own
    guards choose or recompile its graphs."""

    def __init__(self, compiled):
        self.compiled = compiled

    def guard_check(self, *args, **kwargs) -> bool:
        return True

    def __call__(self, *args, **kwargs):
        return self.compiled(*args, **kwargs)
