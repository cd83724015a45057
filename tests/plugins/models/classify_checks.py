"""Checks every sequence classifier must pass, shared by the model tests."""

import torch
import torch.nn.functional as F

VOCAB = 12
PAD, MARKER = 0, 1  # ordinary tokens are 2 .. VOCAB - 1
MAX_LEN = 20


def marker_data(rows: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random sequences of 3..20 tokens padded to 20; label 1 where the marker token occurs.

    Returns idx (rows, 20), pad_mask (rows, 20) and labels (rows,), half of each class.
    """
    n_real = torch.randint(3, MAX_LEN + 1, (rows,), generator=generator)
    idx = torch.randint(2, VOCAB, (rows, MAX_LEN), generator=generator)
    labels = torch.arange(rows) % 2
    where = (torch.rand(rows, generator=generator) * n_real).long()  # a real position per row
    idx[labels == 1, where[labels == 1]] = MARKER
    pad_mask = torch.arange(MAX_LEN)[None, :] >= n_real[:, None]
    return idx.masked_fill(pad_mask, PAD), pad_mask, labels


def held_out_accuracy(model: torch.nn.Module, lr: float, steps: int = 100) -> float:
    """Train `model` with Adam on 256 marker rows (batches of 64); its accuracy on 256 others.

    Training stops early once a pass over the 256 rows averages a loss below 0.05.
    """
    generator = torch.Generator().manual_seed(1)
    idx, pad_mask, labels = marker_data(512, generator)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    threads = torch.get_num_threads()
    # Ops this small gain nothing from a second thread, and on a busy machine waiting for it
    # made training up to 10x slower.
    torch.set_num_threads(1)
    try:
        model.train()
        recent = []
        for step in range(steps):
            rows = slice(64 * (step % 4), 64 * (step % 4 + 1))
            loss = F.cross_entropy(model(idx[rows], pad_mask[rows]), labels[rows])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            recent = [*recent[-3:], loss.item()]
            if len(recent) == 4 and sum(recent) / 4 < 0.05:
                break
        model.eval()
        with torch.no_grad():
            predicted = model(idx[256:], pad_mask[256:]).argmax(dim=-1)
    finally:
        torch.set_num_threads(threads)
    return (predicted == labels[256:]).float().mean().item()


def assert_padding_invariant(model: torch.nn.Module) -> None:
    """A row's logits are the same alone and unpadded as beside longer rows, padded (eval mode)."""
    model.eval()
    lengths = [1, 4, 9, 13]
    idx = torch.randint(2, VOCAB, (len(lengths), max(lengths)))
    pad_mask = torch.arange(max(lengths))[None, :] >= torch.tensor(lengths)[:, None]
    with torch.no_grad():
        batched = model(idx.masked_fill(pad_mask, PAD), pad_mask)
        for row, n in enumerate(lengths):
            alone = model(idx[row:row + 1, :n], torch.zeros(1, n, dtype=torch.bool))
            torch.testing.assert_close(batched[row:row + 1], alone, rtol=1e-5, atol=1e-5)
    # padding with other token ids changes nothing either: only the mask says what is padding
    with torch.no_grad():
        scrambled = model(idx, pad_mask)
    torch.testing.assert_close(scrambled, batched, rtol=1e-5, atol=1e-5)
