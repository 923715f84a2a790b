"""Turning global indices into model-ready batches.

``TensorImages`` keeps a small dataset on the training device as uint8 and does
normalisation and augmentation (random crop with padding, horizontal flip) as tensor ops
there: a batch is an index slice, with no host-device copy and no host sync. ``FolderImages``
decodes image files with a DataLoader and workers; ``DatasetImages`` reads a user's map-style
datasets. All yield ``(indices, inputs)`` with the
indices on the device, so every batch carries the global indices of its points.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch.utils.data import BatchSampler, DataLoader

from bdsel.data.sources import Dataset, ImageSet


def random_crop_flip(
    x: torch.Tensor, padding: int, flip: bool, generator: torch.Generator
) -> torch.Tensor:
    """Per-image random crop (zero padding, which is the mean after normalisation) and flip.

    x: float [B, C, H, W] -> [B, C, H, W]; all random numbers come from ``generator``.
    """
    b, c, h, w = x.shape
    device = x.device
    if padding > 0:
        padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        offsets = torch.randint(0, 2 * padding + 1, (2, b), device=device, generator=generator)
        rows = (offsets[0, :, None] + torch.arange(h, device=device))[:, None, :, None]
        cols = (offsets[1, :, None] + torch.arange(w, device=device))[:, None, None, :]
        batch = torch.arange(b, device=device)[:, None, None, None]
        chan = torch.arange(c, device=device)[None, :, None, None]
        x = padded[batch, chan, rows, cols]
    if flip:
        mask = torch.rand(b, device=device, generator=generator) < 0.5
        x = torch.where(mask[:, None, None, None], x.flip(3), x)
    return x


class TensorImages:
    """A dataset resident on ``device`` as uint8, batched by index."""

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device,
        *,
        augment: bool = True,
        channels_last: bool = False,
    ) -> None:
        assert dataset.train.images is not None and dataset.test.images is not None
        self.device = device
        self.splits = {
            "train": dataset.train.images.to(device),
            "test": dataset.test.images.to(device),
        }
        c = dataset.in_channels
        self.mean = torch.tensor(dataset.mean, device=device).view(1, c, 1, 1) * 255
        self.inv_std = 1.0 / (torch.tensor(dataset.std, device=device).view(1, c, 1, 1) * 255)
        self.padding = dataset.crop_padding if augment else 0
        self.flip = dataset.flip and augment
        self.channels_last = channels_last

    def rows(
        self, split: str, idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Normalised float images [len(idx), C, H, W]; augmented when a generator is given."""
        x = (self.splits[split][idx].float() - self.mean) * self.inv_std
        if generator is not None and (self.padding or self.flip):
            x = random_crop_flip(x, self.padding, self.flip, generator)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def iter_batches(
        self,
        split: str,
        order: torch.Tensor,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Slices of ``order`` (global indices) -> ``(indices, inputs)``, both on the device."""
        order = order.to(self.device)
        n = len(order)
        stop = n - n % batch_size if drop_last else n
        for start in range(0, stop, batch_size):
            idx = order[start : start + batch_size]
            yield idx, self.rows(split, idx, generator)


def loader_generator(generator: torch.Generator | None) -> torch.Generator | None:
    """A DataLoader's generator (its order and its workers' seeds) drawn from ``generator``:
    the loader's randomness follows the caller's stream; None for none."""
    if generator is None:
        return None
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator().manual_seed(seed)


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, images: ImageSet, transform) -> None:
        self.files = images.files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int):
        from PIL import Image

        with Image.open(self.files[i]) as img:
            return self.transform(img.convert("RGB")), i


class FolderImages:
    """Image files decoded by DataLoader workers (random-resized crop + flip when training)."""

    def __init__(
        self,
        dataset: Dataset,
        device: torch.device,
        *,
        augment: bool = True,
        channels_last: bool = False,
        num_workers: int | None = None,
    ) -> None:
        """``num_workers``: DataLoader workers that decode (None: the dataset's own)."""
        from torchvision import transforms as T

        size = dataset.image_size
        norm = T.Normalize(dataset.mean, dataset.std)
        train_tf = (
            T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip(), T.ToTensor(), norm])
            if augment
            else None
        )
        eval_tf = T.Compose(
            [T.Resize(int(size * 256 / 224)), T.CenterCrop(size), T.ToTensor(), norm]
        )
        self.device = device
        self.datasets = {
            ("train", True): _FileDataset(dataset.train, train_tf or eval_tf),
            ("train", False): _FileDataset(dataset.train, eval_tf),
            ("test", False): _FileDataset(dataset.test, eval_tf),
        }
        self.num_workers = dataset.num_workers if num_workers is None else num_workers
        self.channels_last = channels_last
        self.decoded = 0  # images decoded so far: what a step's data costs

    def iter_batches(
        self,
        split: str,
        order: torch.Tensor,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        sampler = BatchSampler(order.tolist(), batch_size, drop_last=drop_last)
        return self._load(split, sampler, generator)

    def iter_index_batches(
        self, split: str, batches: list[torch.Tensor], *, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The given batches of global indices, decoded in order by the workers (prefetched):
        the training loop's chosen points, when nothing else of a candidate batch is read."""
        return self._load(split, [b.tolist() for b in batches], generator)

    def _load(
        self, split: str, batch_sampler: Iterable[list[int]], generator: torch.Generator | None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.datasets[(split, generator is not None and split == "train")]
        loader = DataLoader(
            ds,
            batch_sampler=batch_sampler,
            num_workers=self.num_workers,
            pin_memory=self.device.type == "cuda",
            persistent_workers=False,
            generator=loader_generator(generator),
        )
        for x, idx in loader:
            self.decoded += len(idx)
            x = x.to(self.device, non_blocking=True)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            yield idx.to(self.device, non_blocking=True), x

    def rows(
        self, split: str, idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return next(self.iter_batches(split, idx, len(idx), generator=generator))[1]


def stack_images(items: list[Any]) -> Any:
    """A batch of a map-style dataset's items: their first elements (the images), stacked
    when they are tensors of one shape, a list otherwise (PIL images)."""
    images = [item[0] if isinstance(item, tuple | list) else item for item in items]
    if all(isinstance(x, torch.Tensor) for x in images) and len({x.shape for x in images}) == 1:
        return torch.stack(images)
    return images


class DatasetImages:
    """Map-style datasets as an image source: ``splits`` names each (item ``i`` = image ``i``,
    a tensor, or a tuple whose first element is one), read by a DataLoader in the order asked.
    Augmentation is the datasets' own transforms; a generator seeds the loader's."""

    def __init__(
        self,
        splits: dict[str, torch.utils.data.Dataset],
        device: torch.device,
        *,
        num_workers: int = 0,
    ) -> None:
        self.splits, self.device, self.num_workers = splits, device, num_workers

    def iter_batches(
        self,
        split: str,
        order: torch.Tensor,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Slices of ``order`` (indices of ``split``) -> ``(indices, inputs)`` on the device."""
        order = order.cpu()
        loader = DataLoader(
            self.splits[split],
            batch_sampler=BatchSampler(order.tolist(), batch_size, drop_last=drop_last),
            num_workers=self.num_workers,
            collate_fn=stack_images,
            generator=loader_generator(generator),
        )
        stop = len(order) - len(order) % batch_size if drop_last else len(order)
        for start, x in zip(range(0, stop, batch_size), loader, strict=True):
            if not isinstance(x, torch.Tensor):
                raise TypeError(
                    f"{split}: items must be image tensors (or tuples that start with one), "
                    f"got {type(x[0]).__name__}; add a ToTensor transform"
                )
            yield order[start : start + batch_size].to(self.device), x.to(self.device)

    def rows(
        self, split: str, idx: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        return next(self.iter_batches(split, idx, len(idx), generator=generator))[1]


ImageSource = TensorImages | FolderImages | DatasetImages


def make_image_source(
    dataset: Dataset,
    device: torch.device,
    *,
    augment: bool = True,
    channels_last: bool = False,
    num_workers: int | None = None,
) -> ImageSource:
    if dataset.in_memory:
        return TensorImages(dataset, device, augment=augment, channels_last=channels_last)
    return FolderImages(
        dataset, device, augment=augment, channels_last=channels_last, num_workers=num_workers
    )
