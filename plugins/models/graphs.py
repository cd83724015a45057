"""The export graphs every language model and classifier shares: full-sequence forwards."""

from __future__ import annotations

from torch import nn

from lmforge.interfaces.export import ExportGraph, TensorSpec

INPUT_IDS = TensorSpec("input_ids", "int64", ("batch", "sequence"))
PAD_MASK = TensorSpec("pad_mask", "bool", ("batch", "sequence"))  # True = padding


def _limit(max_length: int | None) -> dict[str, int]:
    return {} if max_length is None else {"sequence": max_length}


def lm_graph(module: nn.Module, vocab_size: int, max_length: int | None) -> ExportGraph:
    """"model" of a language model: `input_ids` (batch, sequence) -> `logits` (batch,
    sequence, vocab), the module's own forward."""
    logits = TensorSpec("logits", "float32", ("batch", "sequence", vocab_size))
    return ExportGraph("model", module, (INPUT_IDS,), (logits,), max_sizes=_limit(max_length))


def classifier_graph(module: nn.Module, num_labels: int, max_length: int | None
                     ) -> ExportGraph:
    """"model" of a classifier: `input_ids` and `pad_mask` (batch, sequence) -> `logits`
    (batch, labels), the module's own forward."""
    logits = TensorSpec("logits", "float32", ("batch", num_labels))
    return ExportGraph("model", module, (INPUT_IDS, PAD_MASK), (logits,),
                       max_sizes=_limit(max_length))
