"""Parity of an exported graph with its torch module: outputs at several shapes, greedy decoding."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from lmforge.interfaces.export import ExportGraph
from lmforge.interfaces.model import LanguageModel
from lmforge.plugins.export.trace import example_inputs, size_of, symbols, trace_sizes
from lmforge.plugins.tasks.generate import generate

# every output element within ABS of the reference, or within REL of its size
TOLERANCE = {"abs": 1e-4, "rel": 1e-3}
# int8 weights move each logit by up to a few hundredths of the output's range: the quantized
# graphs are held to a share of each output's largest reference magnitude instead.
INT8_TOLERANCE = {"share_of_max": 0.1}
GREEDY_TOKENS = 32
LONG_SEQUENCE = 512  # what "the context length" is for models without one (lstm, textcnn)
SEED = 0


def session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def parity_sizes(graph: ExportGraph, context: int | None) -> list[dict[str, int]]:
    """Three shapes, none the traced one (batch 2): batch 1 with one token and nothing cached;
    batch 3 at the full context (one new token after context - 1 cached, for a decode step);
    batch 4 in between, several new tokens on a cache."""
    full = context or LONG_SEQUENCE
    cases = [{"batch": 1, "sequence": 1, "step": 1, "past": 0},
             {"batch": 3, "sequence": full, "step": 1, "past": full - 1},
             {"batch": 4, "sequence": max(full // 2, 1), "step": max(full // 4, 1),
              "past": full // 2}]
    names = symbols(graph)
    others = {name: 3 for name in names if name not in cases[0]}
    return [{name: min(size, graph.max_sizes.get(name, size))
             for name, size in {**others, **case}.items() if name in names} for case in cases]


def timing_sizes(graph: ExportGraph, context: int | None) -> dict[str, int]:
    """One sequence at the full context (at most 128 tokens), or one new token after it."""
    full = min(context or 128, 128)
    sizes = {"batch": 1, "sequence": full, "step": 1, "past": full - 1}
    return {name: min(sizes.get(name, 3), graph.max_sizes.get(name, sizes.get(name, 3)))
            for name in symbols(graph)}


def compare(found: np.ndarray, expected: np.ndarray, tolerance: Mapping[str, float]
            ) -> dict[str, Any]:
    """The largest absolute and relative differences, and whether every element is within
    `tolerance` ({"abs", "rel"}, either suffices, or {"share_of_max"})."""
    if found.shape != expected.shape:
        return {"passed": False, "shape": list(found.shape), "expected": list(expected.shape)}
    diff = np.abs(found.astype(np.float64) - expected.astype(np.float64))
    scale = np.abs(expected.astype(np.float64))
    if diff.size == 0:
        return {"passed": True, "max_abs": 0.0, "max_rel": 0.0}
    if "share_of_max" in tolerance:
        allowed = tolerance["share_of_max"] * float(scale.max())
        within = diff <= allowed
    else:
        within = (diff <= tolerance["abs"]) | (diff <= tolerance["rel"] * scale)
    return {"passed": bool(within.all()), "max_abs": float(diff.max()),
            "max_rel": float((diff / np.maximum(scale, 1e-12)).max()),
            "outside": int((~within).sum())}


def graph_parity(graph: ExportGraph, onnx_file: Path, vocab_size: int, context: int | None,
                 tolerance: Mapping[str, float]) -> dict[str, Any]:
    """The graph's ONNX file against its module, output by output, at `parity_sizes`."""
    runner = session(onnx_file)
    rng = np.random.default_rng(SEED)
    cases = []
    for sizes in parity_sizes(graph, context):
        inputs = example_inputs(graph, sizes, vocab_size, rng)
        with torch.no_grad():
            expected = graph.module(*(torch.from_numpy(a) for a in inputs))
        expected = expected if isinstance(expected, tuple) else (expected,)
        found = runner.run(None, {spec.name: a for spec, a in zip(graph.inputs, inputs,
                                                                   strict=True)})
        outputs = {spec.name: compare(f, e.numpy(), tolerance)
                   for spec, f, e in zip(graph.outputs, found, expected, strict=True)}
        cases.append({"sizes": sizes, "passed": all(o["passed"] for o in outputs.values()),
                      "outputs": outputs})
    return {"file": onnx_file.name, "traced_at": trace_sizes(graph),
            "passed": all(case["passed"] for case in cases), "cases": cases}


def onnx_greedy(decode: ExportGraph, runner: ort.InferenceSession, prompt: Sequence[int],
                tokens: int, window: int | None) -> list[int]:
    """Greedy decoding of one sequence through the decode graph, its state fed back.

    As the torch path (`generate`): each step feeds only the new token; when the next step
    would pass the model's context, the state is dropped and the last window - 1 tokens are
    fed again.
    """
    state_spec = decode.state
    specs = {spec.name: spec for spec in decode.inputs}
    names = [spec.name for spec in decode.outputs]

    def fresh_state() -> dict[str, np.ndarray]:
        empty = {**{name: 0 for name in symbols(decode)}, "batch": 1}
        return {name: np.zeros([size_of(d, empty) for d in specs[name].shape], np.float32)
                for name in state_spec.inputs}

    ids, out = list(prompt), []
    state, cached, pending = fresh_state(), 0, list(prompt)
    for _ in range(tokens):
        if window is not None and cached + len(pending) > window:
            state, cached, pending = fresh_state(), 0, ids[-max(window - 1, 1):]
        feeds = {"input_ids": np.asarray([pending], np.int64), **state}
        if "position_ids" in specs:
            feeds["position_ids"] = np.arange(cached, cached + len(pending), dtype=np.int64)[None]
        if "attention_mask" in specs:
            feeds["attention_mask"] = np.ones((1, cached + len(pending)), dtype=bool)
        results = dict(zip(names, runner.run(None, feeds), strict=True))
        for given, returned in zip(state_spec.inputs, state_spec.outputs, strict=True):
            state[given] = (results[returned] if state_spec.sequence_axis is None else
                            np.concatenate([state[given], results[returned]],
                                           axis=state_spec.sequence_axis))
        cached += len(pending)
        token = int(np.argmax(results["logits"][0]))
        out.append(token)
        ids.append(token)
        pending = [token]
    return out


def greedy_parity(model: LanguageModel, decode: ExportGraph, onnx_file: Path,
                  prompt: Sequence[int], reference: list[int] | None = None) -> dict[str, Any]:
    """GREEDY_TOKENS tokens after `prompt`, greedily, through the decode graph and through the
    torch model's `generate` (temperature 0): the ids must be identical. `reference` reuses
    the torch ids of an earlier call."""
    if reference is None:
        reference = list(generate(model, prompt, max_new_tokens=GREEDY_TOKENS, temperature=0))
    runner = session(onnx_file)
    started = time.perf_counter()
    found = onnx_greedy(decode, runner, prompt, GREEDY_TOKENS, model.max_context)
    seconds = time.perf_counter() - started
    agree = next((i for i, (a, b) in enumerate(zip(found, reference, strict=True)) if a != b),
                 len(reference))
    return {"file": onnx_file.name, "prompt_ids": list(prompt), "torch": reference,
            "onnxruntime": found, "identical": found == reference, "agreeing_prefix": agree,
            "tokens_per_second": round(GREEDY_TOKENS / seconds, 1)}


def milliseconds_per_call(onnx_file: Path, graph: ExportGraph, sizes: Mapping[str, int],
                          vocab_size: int, repeats: int = 5) -> float:
    """The median time of one call of the ONNX graph at `sizes` (after a warm-up call)."""
    runner = session(onnx_file)
    inputs = example_inputs(graph, sizes, vocab_size, np.random.default_rng(SEED))
    feeds = {spec.name: a for spec, a in zip(graph.inputs, inputs, strict=True)}
    runner.run(None, feeds)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        runner.run(None, feeds)
        times.append(time.perf_counter() - started)
    return round(float(np.median(times)) * 1000, 3)
