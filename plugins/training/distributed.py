"""The standard trainer across processes: its process group, each rank's share of a step's batch,
the model wrapped for DDP or FSDP, and the naming of a rank that stopped answering."""

from __future__ import annotations

import contextlib
import datetime
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from lmforge.errors import LmforgeError
from lmforge.run.world import World, world_store

HEARTBEAT = "lmforge/heartbeat/"
HEARTBEAT_EVERY = 1.0  # seconds between a rank's heartbeats
SILENT_FOR = 3.0  # seconds without a new heartbeat that mark a rank as stalled


@dataclass(frozen=True)
class Share:
    """The part of each step's global batch (`grad_accum` micro-batches of `batch_size` rows)
    one rank computes: whole micro-batches when they divide among the ranks, else a slice of the
    rows of every one. Either way the ranks together see each row of the step exactly once."""

    micro_batches: tuple[int, ...]  # offsets in the step's micro-batches
    rows: slice  # the rows of each of them
    loss_weight: float  # this rank's part of a micro-batch's mean loss

    def take(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.rows == slice(None):
            return batch
        return {key: value[self.rows] for key, value in batch.items()}


def share_of(world: World, batch_size: int, grad_accum: int) -> Share:
    n, rank = world.size, world.rank
    if grad_accum % n == 0:
        return Share(tuple(range(rank, grad_accum, n)), slice(None), 1.0)
    if batch_size % n == 0:
        per_rank = batch_size // n
        return Share(tuple(range(grad_accum)), slice(rank * per_rank, (rank + 1) * per_rank),
                     1.0 / n)
    raise LmforgeError(f"the global batch of trainer.batch_size={batch_size} x "
                       f"trainer.grad_accum={grad_accum} does not split among {n} processes: "
                       f"make grad_accum or batch_size a multiple of {n}")


def training_group(world: World, backend: str, device: torch.device,
                   timeout: float) -> dist.ProcessGroup:
    """The group the training collectives use, with the trainer's timeout (the default group
    keeps the long one of the setup barrier)."""
    if backend == "auto":
        backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return dist.new_group(backend=backend, timeout=datetime.timedelta(seconds=timeout))


def rank_device(device: torch.device, world: World) -> torch.device:
    return torch.device("cuda", world.local_rank) if device.type == "cuda" else device


def wrap(model: nn.Module, strategy: str, group: dist.ProcessGroup,
         device: torch.device) -> nn.Module:
    """DDP (a replica per rank, gradients averaged) or FSDP2 (parameters, gradients and optimizer
    state sharded across the ranks, each block gathered when it runs)."""
    if strategy == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        # The models' buffers are constants: broadcasting them each forward would only cost.
        # Gradients as views of the all-reduce buckets save a copy of them each step (2 to 3%
        # more tokens/s for austen-char at two processes).
        return DistributedDataParallel(model, device_ids=ids, process_group=group,
                                       forward_sync_buffers=False, gradient_as_bucket_view=True)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(group, device.type)
    # The repeated layers (every ModuleList's members) are sharded one by one, innermost first,
    # so one layer's parameters are gathered at a time; the rest goes with the model.
    layers = [m for module in model.modules() if isinstance(module, nn.ModuleList) for m in module]
    for layer in reversed(layers):
        fully_shard(layer, mesh=mesh)
    return fully_shard(model, mesh=mesh)


def no_gradient_sync(model: nn.Module, last: bool):
    """Skip the gradient all-reduce on every micro-batch of a step but its last."""
    if last:
        return contextlib.nullcontext()
    if not hasattr(model, "set_requires_gradient_sync"):  # DDP, or a model in one process
        return getattr(model, "no_sync", contextlib.nullcontext)()
    return _fsdp_no_sync(model)


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


class Heartbeat:
    """A thread that counts up a key per rank in torchrun's store, so that when a collective times
    out the ranks still alive can tell which one stopped answering."""

    def __init__(self, world: World) -> None:
        self.world = world
        self.store = world_store(world)
        self.prefix = HEARTBEAT
        self.identity = f"{socket.gethostname()} {os.getpid()}"
        self.store.set(f"{self.prefix}{world.rank}/who", self.identity)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="lmforge-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_EVERY):
            self.store.add(f"{self.prefix}{self.world.rank}/beats", 1)

    def close(self) -> None:
        self._stop.set()

    def stalled(self) -> list[tuple[int, str, str]]:
        """The ranks whose heartbeat stands still, with their host and process id."""
        keys = [f"{self.prefix}{rank}/beats" for rank in range(self.world.size)]
        before = [self.store.add(key, 0) for key in keys]
        time.sleep(SILENT_FOR)
        after = [self.store.add(key, 0) for key in keys]
        found = []
        for rank, (b, a) in enumerate(zip(before, after, strict=True)):
            if a == b and rank != self.world.rank:
                host, pid = self.store.get(f"{self.prefix}{rank}/who").decode().split()
                found.append((rank, host, pid))
        return found

    def explain(self, error: Exception, timeout: float) -> LmforgeError:
        """An error naming the ranks that stopped answering (and ending those on this machine,
        which cannot end themselves and would hold the job until torchrun's kill delay)."""
        try:
            stalled = self.stalled()
        except (RuntimeError, ValueError) as exc:  # the store's host is gone too
            return LmforgeError(f"rank {self.world.rank}: a collective failed ({error}); the "
                                f"other ranks could not be asked why ({exc})")
        if not stalled:
            return LmforgeError(f"rank {self.world.rank}: a collective failed and every other "
                                f"rank still answers; the first error: {error}")
        names = []
        for rank, host, pid in stalled:
            names.append(f"rank {rank} (pid {pid} on {host})")
            if host == socket.gethostname():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
        return LmforgeError(f"{', '.join(names)} stopped answering: rank {self.world.rank} "
                            f"waited {timeout:g} s (trainer.collective_timeout) in a collective "
                            f"and the stalled rank's heartbeat stands still ({error})")
