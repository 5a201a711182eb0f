"""Small shared data for the detection tests: a few Fashion-MNIST canvases (built once)."""

import pytest
from nft.detection import CanvasDetection


@pytest.fixture(scope="session")
def canvas_train():
    return CanvasDetection(64, split="train", size=64, item_size=(16, 24), seed=3)


@pytest.fixture(scope="session")
def canvas_batch(canvas_train):
    images, targets = zip(*(canvas_train[i] for i in range(4)))
    return list(images), list(targets)
