"""Random crop and flip for image data, on the loader path of a fit.

The in-memory index-slice batches cannot transform each example, so augmentation
goes through a ``DataLoader`` over the same tensors: each example is transformed
on every read by torchvision's ``transforms.v2`` (drawing from torch's RNG, so a fit
with a seed is reproducible and resumes exactly). It costs per-example Python work:
use ``workers`` to move it off the training process.

>>> import torch
>>> from bayesprune.data import Split
>>> split = Split(torch.rand(10, 1, 28, 28), torch.arange(10) % 2)
>>> loader = augmented_loader(split, ["crop", "flip"], batch_size=4)
>>> [tuple(x.shape) for x, _ in loader][:1], len(loader)
([(4, 1, 28, 28)], 3)
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset
from torchvision.transforms import v2

from bayesprune.data.dataset import Split
from bayesprune.errors import ConfigError, DataError

#: what ``augment=`` may name
AUGMENTATIONS = ("crop", "flip")


class Augmented(TorchDataset):
    """The examples of an image ``Split`` (``(N, C, H, W)``), transformed on every read.

    :param augment: any of ``"crop"`` (pad by ``H // 8`` pixels on each side with zeros,
        then crop back to ``H × W`` at a random place) and ``"flip"`` (mirror left-right
        with probability 1/2).
    """

    def __init__(self, split: Split, augment: Sequence[str], *, who: str = "augment") -> None:
        augment = list(augment)
        unknown = [a for a in augment if a not in AUGMENTATIONS]
        if unknown:
            raise ConfigError(f"{who}: unknown augmentation(s) {unknown}; known: {AUGMENTATIONS}")
        if split.x.dim() != 4:
            raise DataError(
                f"{who}: crop and flip need image inputs (N, C, H, W), got shape "
                f"{tuple(split.x.shape)} (for Fashion-MNIST use flatten = false)"
            )
        self.split = split
        h, w = split.x.shape[-2:]
        steps: list[v2.Transform] = []
        if "crop" in augment:
            steps.append(v2.RandomCrop((h, w), padding=max(1, h // 8)))
        if "flip" in augment:
            steps.append(v2.RandomHorizontalFlip())
        self.transform = v2.Compose(steps)

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        return self.transform(self.split.x[i]), self.split.y[i]


def augmented_loader(
    split: Split,
    augment: Sequence[str],
    *,
    batch_size: int,
    workers: int = 0,
    pin_memory: bool = False,
) -> DataLoader:
    """A shuffling ``DataLoader`` over ``Augmented(split, augment)``. Workers are started
    afresh every epoch (not persistent), so that their RNG, seeded from the fit's, makes a
    resumed fit exact."""
    return DataLoader(
        Augmented(split, augment),
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        pin_memory=pin_memory and torch.cuda.is_available(),
    )
