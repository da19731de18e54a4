"""Data sets for the reference search and re-training.

``digits`` (scikit-learn's bundled 8x8 digits, no download) is the default and runs on any CPU;
``cifar10`` / ``cifar100`` come from torchvision (``download=True`` needs internet);
``imagenet`` and ``folder`` read a torchvision ``ImageFolder`` tree; ``fake`` is torchvision's
``FakeData`` for tests. Missing data raises :class:`DataError` saying how to get it.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset, TensorDataset

__all__ = [
    "DATASETS",
    "DataError",
    "DatasetInfo",
    "Cutout",
    "load_dataset",
    "dataset_info",
    "split_indices",
    "subset_indices",
]

logger = logging.getLogger(__name__)

DATASETS = ("digits", "cifar10", "cifar100", "imagenet", "folder", "fake")

CIFAR_MEAN = (0.49139968, 0.48215827, 0.44653124)
CIFAR_STD = (0.24703233, 0.24348505, 0.26158768)
CIFAR100_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR100_STD = (0.2673, 0.2564, 0.2762)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# digits pixels are 0..16; mean / std of the whole set after scaling to [0, 1]
DIGITS_MEAN = (0.30526,)
DIGITS_STD = (0.37605,)
# digits has no official test split: a fixed permutation, the last 20% is "test"
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_SPLIT_SEED = 0


class DataError(ValueError):
    """A data set is unknown, missing or malformed; the message says what to do."""


@dataclass(frozen=True)
class DatasetInfo:
    """What a network needs to know about a data set."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int


class Cutout:
    """Zero one random ``length`` x ``length`` square of a CHW tensor (DeVries & Taylor, 2017).

    The square's centre is uniform over the image, so it may be partly outside. Uses torch's
    global generator, so it is reproducible with ``torch.manual_seed``.
    """

    def __init__(self, length: int) -> None:
        if length <= 0:
            raise ValueError(f"invalid cutout length: {length}")
        self.length = int(length)

    def __call__(self, img: Tensor) -> Tensor:
        h, w = img.shape[-2:]
        cy = int(torch.randint(h, ()).item())
        cx = int(torch.randint(w, ()).item())
        half = self.length // 2
        y0, y1 = max(0, cy - half), min(h, cy + half)
        x0, x1 = max(0, cx - half), min(w, cx + half)
        img = img.clone()
        img[..., y0:y1, x0:x1] = 0.0
        return img

    def __repr__(self) -> str:
        return f"Cutout(length={self.length})"


class _TransformedTensors(Dataset):
    """In-memory (image, label) tensors with an optional per-sample tensor transform."""

    def __init__(self, images: Tensor, labels: Tensor, transform: Callable | None) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.targets = labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        img = self.images[i]
        if self.transform is not None:
            img = self.transform(img)
        return img, int(self.labels[i])


def dataset_info(
    name: str, *, root: str | Path | None = None, image_size: int | None = None,
    num_classes: int | None = None,
) -> DatasetInfo:
    """Classes, channels and image size of a data set, without loading images (``folder``
    counts the class folders under ``root/train``)."""
    _check_name(name)
    if name == "digits":
        return DatasetInfo("digits", 10, 1, 8)
    if name == "cifar10":
        return DatasetInfo("cifar10", 10, 3, 32)
    if name == "cifar100":
        return DatasetInfo("cifar100", 100, 3, 32)
    if name == "fake":
        return DatasetInfo("fake", num_classes or 10, 3, image_size or 32)
    split_dir = _folder_split(name, root, "train")
    classes = sorted(p.name for p in split_dir.iterdir() if p.is_dir())
    default_size = 224 if name == "imagenet" else 32
    return DatasetInfo(name, len(classes), 3, image_size or default_size)


def load_dataset(
    name: str,
    *,
    train: bool = True,
    root: str | Path | None = None,
    download: bool = False,
    augment: bool = True,
    cutout: int = 0,
    subset: float = 1.0,
    image_size: int | None = None,
    fake_size: int = 256,
    num_classes: int | None = None,
    seed: int = 0,
) -> tuple[Dataset, DatasetInfo]:
    """Load the ``train`` (or test / validation) part of a data set.

    ``augment`` applies the usual training augmentation of that data set (random crop + flip for
    CIFAR, random-resized crop + flip + colour jitter for ImageNet, none for digits);
    ``cutout`` > 0 adds Cutout of that length (training only). ``subset`` in (0, 1] keeps that
    class-stratified fraction (chosen with ``seed``). ``image_size`` applies to ``imagenet``,
    ``folder`` and ``fake``; ``fake_size`` / ``num_classes`` to ``fake`` only.
    """
    _check_name(name)
    if not 0.0 < subset <= 1.0:
        raise DataError(f"invalid subset fraction: {subset} (must be in (0, 1])")
    if cutout < 0:
        raise DataError(f"invalid cutout length: {cutout}")
    if image_size is not None and image_size < 1:
        raise DataError(f"invalid image size: {image_size}")
    info = None
    if name == "digits":
        ds, info = _digits(train, augment and train, cutout if train else 0)
    elif name in ("cifar10", "cifar100"):
        ds, info = _cifar(name, root, train, download, augment and train, cutout if train else 0)
    elif name == "fake":
        ds, info = _fake(train, fake_size, image_size or 32, num_classes or 10,
                         augment and train, cutout if train else 0)
    else:
        ds, info = _folder(name, root, train, augment and train, cutout if train else 0,
                           image_size)
    if subset < 1.0:
        ds = Subset(ds, subset_indices(_targets(ds), subset, seed=seed))
    return ds, info


def split_indices(n: int, portion: float = 0.5, *, seed: int = 0) -> tuple[list[int], list[int]]:
    """Split ``range(n)`` into the weight half and the alpha half.

    A seeded permutation, then the first ``floor(portion * n)`` indices train the weights and the
    rest the architecture (upstream DARTS takes the first / second half of the unshuffled set;
    shuffling first keeps both halves class-balanced on sorted data such as an ImageFolder).
    """
    if not 0.0 < portion < 1.0:
        raise DataError(f"invalid train portion: {portion} (must be in (0, 1))")
    split = int(math.floor(portion * n))
    if split < 1 or split >= n:
        raise DataError(f"data set of {n} samples is too small to split with portion {portion}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return perm[:split], perm[split:]


def subset_indices(targets: Sequence[int], fraction: float, *, seed: int = 0) -> list[int]:
    """A class-stratified ``fraction`` of the indices (at least one per class), sorted."""
    if not 0.0 < fraction <= 1.0:
        raise DataError(f"invalid subset fraction: {fraction} (must be in (0, 1])")
    targets_np = np.asarray(targets)
    rng = np.random.default_rng(seed)
    keep: list[int] = []
    for c in np.unique(targets_np):
        idx = np.flatnonzero(targets_np == c)
        k = max(1, int(round(fraction * len(idx))))
        keep.extend(rng.choice(idx, size=k, replace=False).tolist())
    return sorted(keep)


# --------------------------------------------------------------------------- loaders


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise DataError(f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}")


def _targets(ds: Dataset) -> list[int]:
    targets = getattr(ds, "targets", None)
    if targets is None:
        targets = [int(ds[i][1]) for i in range(len(ds))]  # type: ignore[arg-type]
    return list(targets)


def _digits(train: bool, augment: bool, cutout: int) -> tuple[Dataset, DatasetInfo]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = torch.tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.tensor(bunch.target, dtype=torch.long)
    n = len(labels)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(_DIGITS_SPLIT_SEED))
    n_test = int(round(_DIGITS_TEST_FRACTION * n))
    idx = perm[n_test:] if train else perm[:n_test]
    images, labels = images[idx].contiguous(), labels[idx].contiguous()
    images = (images - DIGITS_MEAN[0]) / DIGITS_STD[0]
    aug = []
    if augment:
        from torchvision import transforms as T

        aug = [T.RandomCrop(8, padding=1)]  # small shifts; no flips for digits
    transform = None
    if aug or cutout > 0:
        from torchvision import transforms as T

        ops = list(aug) + ([Cutout(cutout)] if cutout > 0 else [])
        transform = T.Compose(ops)
    ds: Dataset
    if transform is None:
        ds = TensorDataset(images, labels)
        ds.targets = labels.tolist()  # type: ignore[attr-defined]
    else:
        ds = _TransformedTensors(images, labels, transform)
    return ds, DatasetInfo("digits", 10, 1, 8)


def _cifar(name: str, root, train: bool, download: bool, augment: bool, cutout: int):
    from torchvision import datasets
    from torchvision import transforms as T

    if root is None:
        raise DataError(f"{name} needs a data folder: pass --data DIR (and --download to fetch it)")
    mean, std = (CIFAR_MEAN, CIFAR_STD) if name == "cifar10" else (CIFAR100_MEAN, CIFAR100_STD)
    aug = [T.RandomCrop(32, padding=4), T.RandomHorizontalFlip()] if augment else []
    transform = T.Compose(aug + [T.ToTensor(), T.Normalize(mean, std)]
                          + ([Cutout(cutout)] if cutout > 0 else []))
    cls = datasets.CIFAR10 if name == "cifar10" else datasets.CIFAR100
    folder = "cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"
    try:
        ds = cls(str(root), train=train, download=download, transform=transform)
    except RuntimeError as err:  # torchvision: "Dataset not found or corrupted"
        raise DataError(
            f"{name} not found: no {Path(root) / folder}; pass --download (needs internet) or "
            f"put the python version from https://www.cs.toronto.edu/~kriz/cifar.html there"
        ) from err
    nc = 10 if name == "cifar10" else 100
    return ds, DatasetInfo(name, nc, 3, 32)


def _fake(train: bool, size: int, image_size: int, num_classes: int, augment: bool, cutout: int):
    from torchvision import datasets
    from torchvision import transforms as T

    if size < 2:
        raise DataError(f"invalid fake data set size: {size}")
    aug = ([T.RandomCrop(image_size, padding=max(1, image_size // 8)), T.RandomHorizontalFlip()]
           if augment else [])
    transform = T.Compose(aug + [T.ToTensor(), T.Normalize((0.5,) * 3, (0.5,) * 3)]
                          + ([Cutout(cutout)] if cutout > 0 else []))
    # test images come from a disjoint range of per-index seeds
    ds = datasets.FakeData(size=size if train else max(2, size // 4),
                           image_size=(3, image_size, image_size), num_classes=num_classes,
                           transform=transform, random_offset=0 if train else 10_000_000)
    return ds, DatasetInfo("fake", num_classes, 3, image_size)


_FOLDER_HELP = {  # kept short: the whole error must fit one terminal line
    "imagenet": ("get ILSVRC2012 from https://image-net.org (no automatic download) as "
                 "ROOT/train/<wnid>/*.JPEG and ROOT/val/<wnid>/*.JPEG"),
    "folder": ("expected ROOT/train/<class>/<image> and ROOT/val/<class>/<image> (ImageFolder "
               "layout)"),
}


def _folder_split(name: str, root, split: str) -> Path:
    if root is None:
        raise DataError(f"{name} needs a data folder: pass --data DIR; {_FOLDER_HELP[name]}")
    root = Path(root)
    candidates = [root / split] if split == "train" else [root / "val", root / "test"]
    for path in candidates:
        if path.is_dir() and any(p.is_dir() for p in path.iterdir()):
            return path
    wanted = " or ".join(str(p) for p in candidates)
    raise DataError(f"{name} data not found: no class folders in {wanted}; {_FOLDER_HELP[name]}")


def _load_image(path: str):
    """torchvision's image loader; a file it cannot decode raises DataError naming the file
    (also from a DataLoader worker, whose re-raised message ends with this one)."""
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except (OSError, ValueError, SyntaxError) as err:  # PIL: UnidentifiedImageError, truncated
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:120]
        if "cannot identify image file" in reason:  # PIL names the file object, not the file
            reason = "not an image file PIL can decode"
        raise DataError(f"cannot read image {path}: {reason}; remove or replace the "
                        f"file") from None


def _folder(name: str, root, train: bool, augment: bool, cutout: int, image_size: int | None):
    from torchvision import datasets
    from torchvision import transforms as T

    path = _folder_split(name, root, "train" if train else "val")
    if name == "imagenet":
        size = image_size or 224
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        if augment:
            aug = [T.RandomResizedCrop(size), T.RandomHorizontalFlip(),
                   T.ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4, hue=0.2)]
        else:
            aug = [T.Resize(int(round(size * 256 / 224))), T.CenterCrop(size)]
    else:
        size = image_size or 32
        mean, std = IMAGENET_MEAN, IMAGENET_STD
        aug = ([T.RandomResizedCrop(size, scale=(0.5, 1.0)), T.RandomHorizontalFlip()] if augment
               else [T.Resize(size), T.CenterCrop(size)])
    transform = T.Compose(aug + [T.ToTensor(), T.Normalize(mean, std)]
                          + ([Cutout(cutout)] if cutout > 0 else []))
    try:
        ds = datasets.ImageFolder(str(path), transform=transform, loader=_load_image)
    except (FileNotFoundError, RuntimeError) as err:
        raise DataError(f"cannot read {name} data in {path}: {err}. {_FOLDER_HELP[name]}") from err
    if not train:
        train_classes = sorted(p.name for p in _folder_split(name, root, "train").iterdir()
                               if p.is_dir())
        if train_classes != ds.classes:
            raise DataError(f"class folders of {path} differ from those of {Path(root) / 'train'}"
                            f" ({len(ds.classes)} vs {len(train_classes)} classes)")
    return ds, DatasetInfo(name, len(ds.classes), 3, size)
