"""Data sets: digits split, weight/alpha split, subsets, cutout, ImageFolder, clear errors."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from darts_amend.data import (
    Cutout,
    DataError,
    dataset_info,
    load_dataset,
    split_indices,
    subset_indices,
)


def _write_folder(root, split: str, classes=("cat", "dog", "emu"), per_class: int = 4, size=12):
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            arr = rng.integers(0, 255, size=(size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).save(d / f"{i}.jpg")


def test_digits_train_test_disjoint_and_normalised():
    from sklearn.datasets import load_digits

    train, info = load_dataset("digits", augment=False)
    test, _ = load_dataset("digits", train=False)
    assert (info.num_classes, info.in_channels, info.image_size) == (10, 1, 8)
    assert len(train) + len(test) == len(load_digits().target) == 1797
    assert len(test) == 359
    xtr = torch.stack([train[i][0] for i in range(len(train))])
    xte = torch.stack([test[i][0] for i in range(len(test))])
    # the two parts are disjoint rows of the same data set
    all_x = torch.cat([xtr, xte]).flatten(1)
    assert torch.unique(all_x, dim=0).shape[0] == torch.unique(
        torch.tensor(load_digits().data), dim=0).shape[0]
    both = torch.cat([xtr, xte])
    assert abs(both.mean().item()) < 1e-3 and abs(both.std().item() - 1.0) < 1e-3
    ytr = sorted({int(train[i][1]) for i in range(len(train))})
    assert ytr == list(range(10))


def test_split_indices_is_a_seeded_partition():
    a, b = split_indices(101, 0.5, seed=3)
    assert len(a) == 50 and len(b) == 51
    assert sorted(a + b) == list(range(101))
    assert (a, b) == split_indices(101, 0.5, seed=3)
    assert a != split_indices(101, 0.5, seed=4)[0]
    with pytest.raises(DataError, match="portion"):
        split_indices(10, 1.0)
    with pytest.raises(DataError, match="too small"):
        split_indices(1, 0.5)


def test_subset_indices_stratified():
    targets = [0] * 40 + [1] * 20 + [2] * 3
    keep = subset_indices(targets, 0.25, seed=0)
    counts = np.bincount(np.asarray(targets)[keep], minlength=3)
    assert counts.tolist() == [10, 5, 1]  # round(0.75) = 1, and never zero per class
    assert keep == sorted(set(keep))
    with pytest.raises(DataError, match="subset"):
        subset_indices(targets, 0.0)


def test_cutout_zeros_the_square_it_draws():
    img = torch.ones(2, 10, 10)
    torch.manual_seed(5)
    out = Cutout(4)(img)
    torch.manual_seed(5)
    cy, cx = int(torch.randint(10, ())), int(torch.randint(10, ()))
    expected = torch.ones(2, 10, 10)
    expected[:, max(0, cy - 2):min(10, cy + 2), max(0, cx - 2):min(10, cx + 2)] = 0
    assert torch.equal(out, expected)
    assert torch.equal(img, torch.ones(2, 10, 10))  # input untouched
    with pytest.raises(ValueError, match="cutout"):
        Cutout(0)


def test_cutout_in_digits_pipeline():
    ds, _ = load_dataset("digits", augment=False, cutout=4)
    plain, _ = load_dataset("digits", augment=False)
    torch.manual_seed(0)
    x = ds[0][0]
    zeros = (x == 0) & (plain[0][0] != 0)
    assert zeros.any()
    test, _ = load_dataset("digits", train=False, cutout=4)  # never on the test split
    assert test[0][0].eq(load_dataset("digits", train=False)[0][0][0]).all()


def test_fake_deterministic_and_shaped():
    a, info = load_dataset("fake", fake_size=8, image_size=6, augment=False)
    b, _ = load_dataset("fake", fake_size=8, image_size=6, augment=False)
    t, _ = load_dataset("fake", train=False, fake_size=8, image_size=6)
    assert len(a) == 8 and len(t) == 2 and info.image_size == 6
    assert a[3][0].shape == (3, 6, 6) and torch.equal(a[3][0], b[3][0])
    assert not torch.equal(a[0][0], t[0][0])


def test_image_folder_and_subset(tmp_path):
    _write_folder(tmp_path, "train", per_class=4)
    _write_folder(tmp_path, "val", per_class=2)
    ds, info = load_dataset("folder", root=tmp_path, image_size=8)
    assert (len(ds), info.num_classes, info.image_size) == (12, 3, 8)
    assert ds[0][0].shape == (3, 8, 8)
    test, _ = load_dataset("folder", root=tmp_path, train=False, image_size=8)
    assert len(test) == 6 and test[0][0].shape == (3, 8, 8)
    sub, _ = load_dataset("folder", root=tmp_path, image_size=8, subset=0.5)
    assert len(sub) == 6
    assert dataset_info("folder", root=tmp_path).num_classes == 3
    inet, iinfo = load_dataset("imagenet", root=tmp_path, image_size=8)
    assert iinfo.image_size == 8 and inet[0][0].shape == (3, 8, 8)


def test_clear_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'mnist'.*digits"):
        load_dataset("mnist")
    with pytest.raises(DataError, match="--download"):
        load_dataset("cifar10", root=tmp_path)
    with pytest.raises(DataError, match="--data"):
        load_dataset("cifar100")
    with pytest.raises(DataError, match="image-net.org"):
        load_dataset("imagenet", root=tmp_path / "nowhere")
    with pytest.raises(DataError, match="ImageFolder layout"):
        load_dataset("folder", root=tmp_path)
    _write_folder(tmp_path, "train", per_class=1)
    with pytest.raises(DataError, match="val"):
        load_dataset("folder", root=tmp_path, train=False)
    _write_folder(tmp_path, "val", classes=("cat", "dog"), per_class=1)
    with pytest.raises(DataError, match="differ"):
        load_dataset("folder", root=tmp_path, train=False)
    with pytest.raises(DataError, match="subset"):
        load_dataset("digits", subset=1.5)
