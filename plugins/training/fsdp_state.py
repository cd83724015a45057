"""FSDP checkpoints in the layout of a one-process run: weights and optimizer state gathered whole
to rank 0 to save, and sent out from it to resume, so a run moves between process counts and
between fsdp, ddp and one process."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from lmforge.run.checkpoint import MODEL_FILE, load_model_weights

GATHER = StateDictOptions(full_state_dict=True, cpu_offload=True)
SCATTER = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)


def _tied(module: nn.Module) -> list[list[str]]:
    """Names that share one parameter, each group sorted: safetensors keeps the first."""
    names = defaultdict(list)
    for name, parameter in module.named_parameters(remove_duplicate=False):
        names[id(parameter)].append(name)
    return [sorted(group) for group in names.values() if len(group) > 1]


def gather_weights(module: nn.Module) -> dict[str, torch.Tensor]:
    """The whole weights on rank 0 ({} on the others); every rank must call it."""
    weights = get_model_state_dict(module, options=GATHER)
    for group in _tied(module):
        for name in group[1:]:
            weights.pop(name, None)
    return weights


def save_weights(weights: dict[str, torch.Tensor], path: Path, module: nn.Module) -> None:
    """Write gathered weights as `safetensors.torch.save_model` writes the same model's."""
    metadata = {name: group[0] for group in _tied(module) for name in group[1:]}
    save_file({k: v.contiguous() for k, v in weights.items()}, str(path), metadata=metadata)


def scatter_weights(module: nn.Module, folder: Path, main: bool) -> None:
    """Load a checkpoint's weights into the sharded model; every rank must call it."""
    weights = load_file(str(Path(folder) / MODEL_FILE)) if main else {}
    if main:
        for group in _tied(module):
            for name in group[1:]:
                weights[name] = weights[group[0]]
    set_model_state_dict(module, weights, options=SCATTER)


def _names(module: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The parameter names in the order of the optimizer's own state_dict indices."""
    name_of = {id(p): name for name, p in module.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def gather_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """The whole optimizer state on rank 0, keyed as `optimizer.state_dict()` keys it."""
    state = get_optimizer_state_dict(module, optimizer, options=GATHER)
    index = {name: i for i, name in enumerate(_names(module, optimizer))}
    return {"state": {index[name]: value for name, value in state.get("state", {}).items()},
            "param_groups": [{**group, "params": [index[n] for n in group["params"]]}
                             for group in state.get("param_groups", [])]}


def scatter_optimizer(module: nn.Module, optimizer: torch.optim.Optimizer,
                      state: dict[str, Any], main: bool) -> None:
    """Load an optimizer state saved in one-process layout into the sharded optimizer."""
    names = _names(module, optimizer)
    full = {}
    if main:
        full = {"state": {names[i]: value for i, value in state["state"].items()},
                "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                                 for group in state["param_groups"]]}
    set_optimizer_state_dict(module, optimizer, full, options=SCATTER)


class ModelState:
    """The weights and optimizer state as checkpoints hold them, whether the model is whole in
    this process or sharded by FSDP (then every rank must make each call: they gather)."""

    def __init__(self, module: nn.Module, optimizer: torch.optim.Optimizer, sharded: bool,
                 main: bool) -> None:
        self.module, self.optimizer, self.sharded, self.main = module, optimizer, sharded, main

    def load_weights(self, folder: Path) -> None:
        if self.sharded:
            scatter_weights(self.module, folder, self.main)
        else:
            load_model_weights(folder, self.module)

    def weights_writer(self) -> Callable[[Path], None] | None:
        """What writes the weights: None for the model's own."""
        if not self.sharded:
            return None
        weights = gather_weights(self.module)
        return lambda path: save_weights(weights, path, self.module)

    def optimizer_state(self) -> dict[str, Any]:
        if self.sharded:
            return gather_optimizer(self.module, self.optimizer)
        return self.optimizer.state_dict()

    def load_optimizer(self, state: dict[str, Any]) -> None:
        if self.sharded:
            scatter_optimizer(self.module, self.optimizer, state, self.main)
        else:
            self.optimizer.load_state_dict(state)
