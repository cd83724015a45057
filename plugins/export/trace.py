"""A model's ExportGraph to an ONNX file: example inputs, torch.export with dynamic dims, ONNX."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn
from torch.export import Dim

from lmforge.errors import ExportError
from lmforge.interfaces.export import ExportGraph, TensorSpec

OPSET = 18  # onnxruntime 1.18, the oldest the `onnx` extra allows, runs it
NUMPY_DTYPES = {"int64": np.int64, "float32": np.float32, "bool": np.bool_}
# The size of each symbolic dim the graphs are traced at; parity runs at other sizes.
TRACE_SIZES = {"batch": 2, "sequence": 7, "step": 3, "past": 4}
OTHER_TRACE_SIZE = 5


def size_of(dim: int | str, sizes: Mapping[str, int]) -> int:
    """A dim's size: a fixed one, a symbol's (from `sizes`), or a sum such as "past+step"."""
    if isinstance(dim, int):
        return dim
    return sum(sizes[part.strip()] for part in dim.split("+"))


def symbols(graph: ExportGraph) -> list[str]:
    """The symbolic dims the graph's inputs name (parts of sums included), in order."""
    found: list[str] = []
    for spec in graph.inputs:
        for dim in spec.shape:
            if isinstance(dim, str):
                found += [p.strip() for p in dim.split("+") if p.strip() not in found]
    return found


def trace_sizes(graph: ExportGraph) -> dict[str, int]:
    """What each symbolic dim is traced at, within the graph's `max_sizes`."""
    sizes = {name: TRACE_SIZES.get(name, OTHER_TRACE_SIZE) for name in symbols(graph)}
    return {name: min(size, graph.max_sizes.get(name, size)) for name, size in sizes.items()}


def example_inputs(graph: ExportGraph, sizes: Mapping[str, int], vocab_size: int,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """Inputs of the given sizes, valid under the graph semantics of the design.

    `input_ids` are ids below the vocabulary. In a decode step, row b leaves the first
    min(b, past) cache entries unused (`attention_mask` False there), as a batch whose requests
    joined at different times does, and its `position_ids` follow its own entries in use.
    `pad_mask` pads row b > 0 on the right after a random number of real tokens. State inputs
    are random (a cache of earlier tokens, an LSTM state).
    """
    past = sizes.get("past", 0)
    unused = [min(b, past) for b in range(sizes.get("batch", 1))]
    arrays = []
    for spec in graph.inputs:
        shape = tuple(size_of(dim, sizes) for dim in spec.shape)
        if spec.name == "position_ids":
            array = np.stack([np.arange(past - u, past - u + shape[1]) for u in unused])
        elif spec.name == "attention_mask":
            array = np.arange(shape[1])[None, :] >= np.asarray(unused)[:, None]
        elif spec.name == "pad_mask":
            lengths = [shape[1]] + list(rng.integers(1, shape[1] + 1, shape[0] - 1))
            array = np.arange(shape[1])[None, :] >= np.asarray(lengths)[:, None]
        elif spec.dtype == "int64":
            array = rng.integers(0, vocab_size, shape)
        elif spec.dtype == "bool":
            array = np.ones(shape, dtype=bool)
        else:
            array = rng.standard_normal(shape) * 0.5
        arrays.append(np.ascontiguousarray(array, dtype=NUMPY_DTYPES[spec.dtype]))
    return arrays


class _Positional(nn.Module):
    """Any graph module behind one `*inputs` signature, so dynamic shapes are one flat tuple."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *inputs: torch.Tensor):
        return self.inner(*inputs)


def _dynamic_shapes(graph: ExportGraph) -> tuple[dict[int, object], ...]:
    """torch.export's dims for each input: one Dim per symbol, shared across inputs; a cache's
    sequence axis may be empty (prefill), other dims hold at least one element. A sum such as
    "past+step" is left to torch.export to derive."""
    minimum = {}
    if graph.state is not None and graph.state.sequence_axis is not None:
        cache_inputs = [s for s in graph.inputs if s.name in graph.state.inputs]
        minimum = {spec.shape[graph.state.sequence_axis]: 0 for spec in cache_inputs}
    dims: dict[str, Dim] = {}
    shapes = []
    for spec in graph.inputs:
        axes = {}
        for axis, dim in enumerate(spec.shape):
            if isinstance(dim, int):
                continue
            if "+" in dim:
                axes[axis] = Dim.DYNAMIC
                continue
            if dim not in dims:
                bounds = {"max": graph.max_sizes[dim]} if dim in graph.max_sizes else {}
                dims[dim] = Dim(dim, min=minimum.get(dim, 1), **bounds)
            axes[axis] = dims[dim]
        shapes.append(axes)
    return tuple(shapes)


@contextlib.contextmanager
def _rnn_as_one_op() -> Iterator[None]:
    """Trace nn.LSTM and nn.GRU as one op over a dynamic sequence length (ONNX LSTM / GRU)
    rather than unrolled over the traced length: torch.onnx.export does the same when it
    captures a graph itself. The patch swaps a kernel the dispatcher caches per op, hence the
    cache clearing: without it a second export in one process unrolls again."""
    from torch.export._patches import (
        register_gru_while_loop_decomposition,
        register_lstm_while_loop_decomposition,
    )

    ops = (torch.ops.aten.lstm.input, torch.ops.aten.gru.input)
    for op in ops:
        op._dispatch_cache.clear()
    try:
        with register_lstm_while_loop_decomposition(), register_gru_while_loop_decomposition():
            yield
    finally:
        for op in ops:
            op._dispatch_cache.clear()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """torch.export and torch.onnx narrate and warn about things that are not the user's."""
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def export_graph(graph: ExportGraph, path: Path, vocab_size: int) -> dict[str, int]:
    """Trace `graph` (dynamic in each symbolic dim) into the ONNX file `path`, its inputs and
    outputs named and shaped as its TensorSpecs say; return the sizes it was traced at."""
    sizes = trace_sizes(graph)
    rng = np.random.default_rng(0)
    inputs = tuple(torch.from_numpy(a) for a in example_inputs(graph, sizes, vocab_size, rng))
    module = _Positional(graph.module).eval()
    try:
        with _quiet(), torch.no_grad(), _rnn_as_one_op():
            program = torch.export.export(module, inputs, dynamic_shapes=(_dynamic_shapes(graph),),
                                          strict=False)
            onnx_program = torch.onnx.export(
                program, inputs, input_names=[spec.name for spec in graph.inputs],
                output_names=[spec.name for spec in graph.outputs], opset_version=OPSET,
                external_data=False, verbose=False)
            onnx_program.save(str(path), external_data=False)
    except Exception as exc:  # torch.export's errors are many and not LmforgeErrors
        raise ExportError(f"graph {graph.name!r} of {type(graph.module).__name__} did not "
                          f"export (traced at {sizes}): {_first_line(exc)}") from exc
    name_dims(path, graph.inputs, graph.outputs)
    return sizes


def name_dims(path: Path, inputs: Sequence[TensorSpec], outputs: Sequence[TensorSpec]) -> None:
    """Give the ONNX file's inputs and outputs the dims their specs declare: symbolic dims by
    their names ("batch", "past+step") rather than the tracer's ("s21"), fixed ones by size."""
    model = onnx.load(str(path))
    declared = {spec.name: spec for spec in (*inputs, *outputs)}
    for value in (*model.graph.input, *model.graph.output):
        spec = declared[value.name]
        dims = value.type.tensor_type.shape.dim
        if len(dims) != len(spec.shape):
            raise ExportError(f"{path.name}: {value.name} has {len(dims)} dims, its spec "
                              f"{len(spec.shape)} ({spec.shape})")
        for dim, want in zip(dims, spec.shape, strict=True):
            if isinstance(want, str):
                dim.dim_param = want
            else:
                dim.dim_value = want
    onnx.save(model, str(path))
