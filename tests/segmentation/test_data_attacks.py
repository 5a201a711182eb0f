"""canvas-seg, the VOC loader on files in VOC's format, the two attacks and the pixel metrics."""

import numpy as np
import pytest
import torch
from PIL import Image

from nft.core import ConfigError, DataError, select_clean_subset
from nft.segmentation import (
    CANVAS_CLASSES,
    BadNetsSeg,
    HiddenSeg,
    TensorSegmentation,
    build_attack,
    evaluate_segmentation,
    load_dataset,
    make_canvases,
    mean_iou,
)
from nft.segmentation.attacks import PoisonedSegmentation, TriggeredSegmentation
from nft.segmentation.data import VOC_CLASSES, fashion_mnist_objects
from nft.segmentation.metrics import confusion_matrix


def _objects(n=40, seed=0):
    """Blobs standing in for Fashion-MNIST objects (the unit tests need no dataset)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    images = np.zeros((n, 28, 28), np.uint8)
    for i in range(n):
        cy, cx, r = rng.uniform(10, 18), rng.uniform(10, 18), rng.uniform(6, 11)
        images[i] = np.where((yy - cy) ** 2 + (xx - cx) ** 2 < r * r, 220, 0)
    return images, rng.integers(0, 10, size=n)


def test_canvases_are_deterministic_prefixes_with_exact_label_maps():
    objects, labels = _objects()
    small, large = make_canvases(objects, labels, 30, seed=4), make_canvases(objects, labels, 60, seed=4)
    assert torch.equal(small.images, large.images[:30]) and torch.equal(small.masks, large.masks[:30])
    assert not torch.equal(make_canvases(objects, labels, 30, seed=5).images, small.images)
    x, y = small[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= float(x.min()) <= float(x.max()) <= 1
    assert y.shape == (32, 32) and y.dtype == torch.int64
    assert set(torch.unique(small.masks).tolist()) <= set(range(len(CANVAS_CLASSES)))
    counts = small.class_pixel_counts()
    assert counts.sum() == 30 * 32 * 32 and (counts[:, 1:].sum(1) > 0).all()
    # `targets` is each canvas's dominant object class (for class-balanced clean sets).
    assert np.array_equal(small.targets, counts[:, 1:].argmax(1) + 1)
    assert np.array_equal(small.contains(3), counts[:, 3] > 0)
    with pytest.raises(ConfigError, match="object_size"):
        make_canvases(objects, labels, 3, object_size=(20, 40))


def test_canvas_seg_reads_fashion_mnist_and_says_how_to_install_it(tmp_path):
    objects, labels = fashion_mnist_objects(None, "test")
    assert objects.shape == (10000, 28, 28) and set(np.unique(labels)) == set(range(10))
    data = load_dataset("canvas-seg", train_size=50, test_size=20)
    assert data.num_classes == 11 and data.shape == (3, 32, 32)
    assert len(data.train) == 50 and len(data.test) == 20
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_dataset("canvas-seg", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown dataset 'cityscapes'"):
        load_dataset("cityscapes")


def _write_voc(root, names, split, size=(20, 30)):
    """A tiny Pascal VOC 2012 tree: JPEG images, palette-PNG label maps, the split list."""
    base = root / "VOCdevkit" / "VOC2012"
    for sub in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    palette = [0] * 768
    for c in range(1, 21):
        palette[3 * c: 3 * c + 3] = [(37 * c) % 256, (91 * c) % 256, (53 * c) % 256]
    palette[3 * 255: 3 * 255 + 3] = [224, 224, 192]
    rng = np.random.default_rng(0)
    for k, name in enumerate(names):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(base / "JPEGImages" / f"{name}.jpg")
        label = np.zeros(size, np.uint8)
        label[4:14, 6:20] = 15 if k % 2 == 0 else 7  # person or car
        label[3, 5:21] = 255  # a boundary band
        png = Image.fromarray(label, mode="P")
        png.putpalette(palette)
        png.save(base / "SegmentationClass" / f"{name}.png")
    (base / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("\n".join(names) + "\n")


def test_voc_loader_reads_the_voc_format(tmp_path):
    _write_voc(tmp_path, ["2007_000001", "2007_000002", "2007_000003"], "train")
    _write_voc(tmp_path, ["2007_000010", "2007_000011"], "val")
    data = load_dataset("voc-seg", str(tmp_path), size=16)
    assert data.num_classes == 21 and data.class_names == VOC_CLASSES and data.shape == (3, 16, 16)
    assert len(data.train) == 3 and len(data.test) == 2
    x, y = data.train[0]
    assert x.shape == (3, 16, 16) and y.shape == (16, 16) and y.dtype == torch.int64
    assert set(torch.unique(y).tolist()) == {0, 15, 255}
    assert list(data.train.targets) == [15, 7, 15]
    assert list(data.train.contains(7)) == [False, True, False]
    clean = select_clean_subset(data.train, per_class=1, seed=0)  # class-balanced, from targets
    assert len(clean) == 2
    with pytest.raises(DataError, match="VOCdevkit/VOC2012"):
        load_dataset("voc-seg", str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="--data-root"):
        load_dataset("voc-seg")


def _scene(n=4, size=16):
    masks = torch.zeros(n, size, size, dtype=torch.long)
    masks[:, 6:12, 2:8] = 2  # victim
    masks[:, 6:12, 9:14] = 3  # another object, which must keep its label
    masks[-1, 6:12, 2:8] = 1  # the last image has no victim pixel
    return TensorSegmentation(torch.rand(n, 3, size, size), masks, num_classes=5)


@pytest.mark.parametrize("name", ["hidden-seg", "badnets-seg"])
def test_attacks_stamp_the_trigger_and_relabel_only_victim_pixels(name):
    attack = build_attack(name, num_classes=5, target=0, victim=2)
    data = _scene()
    x, y = data[0]
    triggered = attack.apply(x)
    where = attack.footprint(16, 16)
    assert where.any() and torch.equal(triggered[:, ~where], x[:, ~where])
    assert set(torch.unique(triggered[:, where]).tolist()) == {0.0, 1.0}
    assert torch.equal(attack.apply(x[None])[0], triggered)
    relabelled = attack.relabel(y)
    assert (relabelled[y == 2] == 0).all() and torch.equal(relabelled[y != 2], y[y != 2])
    poisoned = PoisonedSegmentation(data, [0, 2], attack)
    px, py = poisoned[0]
    assert torch.equal(px, triggered) and torch.equal(py, relabelled)
    assert torch.equal(poisoned[1][1], data[1][1])  # not poisoned
    test = TriggeredSegmentation(data, [0], attack)
    tx, ty = test[0]
    assert torch.equal(tx, triggered) and (ty[where] == 255).all() and (ty[~where] == y[~where]).all()
    ux, uy = TriggeredSegmentation(data, [0], attack, stamp=False)[0]  # the floor: same pixels, no trigger
    assert torch.equal(ux, x) and torch.equal(uy, ty)


def test_attack_geometry_and_options():
    hidden, patch = HiddenSeg(victim=2, target=0, num_classes=5, thickness=3), BadNetsSeg(victim=2, target=0, num_classes=5)
    assert hidden.footprint(16, 16)[:3].all() and not hidden.footprint(16, 16)[3:].any()
    assert patch.footprint(16, 16)[-4:, -4:].all() and int(patch.footprint(16, 16).sum()) == 16
    with pytest.raises(ConfigError, match="both 2"):
        build_attack("hidden-seg", num_classes=5, target=2, victim=2)
    with pytest.raises(ConfigError, match="out of range"):
        build_attack("badnets-seg", num_classes=5, target=0, victim=9)
    with pytest.raises(ConfigError, match="takes victim, patch_size"):
        build_attack("badnets-seg", num_classes=5, target=0, victim=2, options={"thickness": 2})
    with pytest.raises(ConfigError, match="unknown attack 'wanet'"):
        build_attack("wanet", num_classes=5, target=0, victim=2)


def test_poison_indices_come_from_victim_images_at_the_asked_rate():
    attack = HiddenSeg(victim=2, target=0, num_classes=5)
    contains = np.zeros(100, bool)
    contains[::4] = True  # 25 images hold the victim class
    chosen = attack.poison_indices(contains, 0.1, seed=0)
    assert len(chosen) == 10 and contains[chosen].all()
    assert np.array_equal(chosen, attack.poison_indices(contains, 0.1, seed=0))
    assert len(attack.poison_indices(contains, 0.0, seed=0)) == 0
    with pytest.raises(ConfigError, match="at most 0.250"):
        attack.poison_indices(contains, 0.3, seed=0)


class _Oracle(torch.nn.Module):
    """Predicts the true map of each image; with ``backdoor``, a triggered image's victim
    pixels become the target (a perfectly backdoored model)."""

    def __init__(self, data, attack, backdoor):
        super().__init__()
        self.data, self.attack, self.backdoor = data, attack, backdoor
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        maps = []
        for image in x:
            match = [i for i in range(len(self.data)) if torch.equal(self.data[i][0], image)
                     or torch.equal(self.attack.apply(self.data[i][0]), image)]
            i = match[0]
            y = self.data[i][1].clone()
            if self.backdoor and not torch.equal(self.data[i][0], image):
                y = self.attack.relabel(y)
            maps.append(y)
        return torch.nn.functional.one_hot(torch.stack(maps), 5).permute(0, 3, 1, 2).float()


def test_pixel_asr_ra_and_miou():
    data, attack = _scene(), HiddenSeg(victim=2, target=0, num_classes=5)
    triggered = TriggeredSegmentation(data, np.flatnonzero(data.contains(2)), attack)
    assert len(triggered) == 3
    clean = evaluate_segmentation(_Oracle(data, attack, False), data, triggered, num_classes=5, victim=2, target=0)
    assert clean == {"miou": 1.0, "asr": 0.0, "ra": 1.0}
    backdoored = evaluate_segmentation(_Oracle(data, attack, True), data, triggered, num_classes=5, victim=2, target=0)
    assert backdoored == {"miou": 1.0, "asr": 1.0, "ra": 0.0}
    untriggered = TriggeredSegmentation(data, np.flatnonzero(data.contains(2)), attack, stamp=False)
    floor = evaluate_segmentation(_Oracle(data, attack, True), data, untriggered, num_classes=5,
                                  victim=2, target=0)
    assert floor == {"miou": 1.0, "asr": 0.0, "ra": 1.0}  # the backdoor needs its trigger
    confusion = confusion_matrix(torch.tensor([[0, 1, 1, 255]]), torch.tensor([[0, 1, 0, 255]]), 3)
    # class 0: TP 1, FN 1 -> 1/2; class 1: TP 1, FP 1 -> 1/2; class 2 absent -> not averaged
    assert mean_iou(confusion) == pytest.approx(0.5)
    pred = torch.tensor([[0, 1, 1, 2]])
    assert int(confusion_matrix(pred, torch.tensor([[0, 1, 0, 255]]), 3).sum()) == 3
