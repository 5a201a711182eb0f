"""Hand-made detection samples shared by the tests."""

import torch


def toy_targets(size: int = 64):
    """Two images' targets with hand-placed boxes (labels in 1..10), for ``size``-px images."""
    s = size / 64
    return [
        {"boxes": torch.tensor([[4.0, 6.0, 26.0, 30.0], [34.0, 30.0, 60.0, 58.0]]) * s,
         "labels": torch.tensor([3, 7])},
        {"boxes": torch.tensor([[10.0, 10.0, 40.0, 44.0]]) * s, "labels": torch.tensor([5])},
    ]
