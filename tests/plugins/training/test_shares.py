"""Each rank's share of a step's global batch: every row once, whatever the process count."""

from __future__ import annotations

import pytest
import torch

from lmforge.errors import LmforgeError
from lmforge.plugins.training.distributed import share_of
from lmforge.run.world import World


@pytest.mark.parametrize(("size", "batch_size", "grad_accum"),
                         [(1, 4, 1), (2, 4, 2), (2, 4, 1), (4, 8, 2), (3, 6, 3), (4, 4, 8)])
def test_the_ranks_together_compute_every_row_of_a_step_once(size, batch_size, grad_accum):
    seen = []
    weights = set()
    for rank in range(size):
        share = share_of(World(rank=rank, size=size), batch_size, grad_accum)
        rows = torch.arange(batch_size)
        for micro in share.micro_batches:
            seen += [(micro, int(row)) for row in share.take({"row": rows})["row"]]
        # a micro-batch's mean loss is made whole again by the ranks' weights
        weights.add(share.loss_weight * batch_size / len(share.take({"row": rows})["row"]))
    assert sorted(seen) == [(m, r) for m in range(grad_accum) for r in range(batch_size)]
    assert weights == {1.0}


def test_a_batch_that_does_not_split_names_both_settings():
    with pytest.raises(LmforgeError, match=r"batch_size=5 x trainer.grad_accum=3 does not "
                                           r"split among 2 processes"):
        share_of(World(rank=0, size=2), 5, 3)
