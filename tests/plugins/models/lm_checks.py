"""Checks every language model must pass, shared by the model tests."""

import torch
import torch.nn.functional as F


def fit_repeated_pattern(model: torch.nn.Module, lr: float, steps: int = 40) -> list[float]:
    """Train `model` with AdamW on one repeated 8-token pattern; return the loss of each step."""
    data = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 8] * 2 + [1]])  # (1, 17)
    x, y = data[:, :-1], data[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses
