"""The processes of a run started by torchrun: who this one is, and rank 0 going first."""

from __future__ import annotations

import contextlib
import datetime
import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass

# Rank 0 prepares the data and tokenizer while the others wait for it at a barrier: that wait may
# be long, unlike the trainer's collectives, which have their own timeout.
SETUP_TIMEOUT = datetime.timedelta(hours=float(os.environ.get("LMFORGE_SETUP_TIMEOUT_H", "6")))


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    restarts: int = 0  # torchrun's count of elastic restarts of this job

    @property
    def main(self) -> bool:
        return self.rank == 0


def current_world() -> World:
    """This process's place, read from the environment torchrun sets (a lone process: rank 0
    of 1)."""
    env = os.environ
    return World(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                 int(env.get("LOCAL_RANK", 0)), int(env.get("TORCHELASTIC_RESTART_COUNT", 0)))


def join_world(world: World) -> None:
    """Join the default process group (gloo, for the setup barrier) when there are several
    processes; the trainer makes its own groups for training."""
    import torch.distributed as dist

    if world.size > 1 and not dist.is_initialized():
        dist.init_process_group("gloo", store=world_store(world), rank=world.rank,
                                world_size=world.size, timeout=SETUP_TIMEOUT)


@functools.cache
def world_store(world: World):
    """The job's key-value store (one client per process), under a prefix of this attempt:
    torchrun keeps one store through elastic restarts, where the keys of the processes it
    replaced would still be read."""
    import torch.distributed as dist

    # torchrun's agent hosts the store; other launchers leave that to rank 0
    host = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True" and world.main
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]),
                          world_size=world.size, is_master=host, timeout=SETUP_TIMEOUT)
    return dist.PrefixStore(f"lmforge/attempt-{world.restarts}/", store)


@contextlib.contextmanager
def main_first(world: World) -> Iterator[None]:
    """Rank 0 runs the block first (it writes the caches), then the others (they read them)."""
    import torch.distributed as dist

    if world.size > 1 and not world.main:
        dist.barrier()
    yield
    if world.size > 1 and world.main:
        dist.barrier()


def leave_world(world: World) -> None:
    import torch.distributed as dist

    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
