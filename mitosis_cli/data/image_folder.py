"""Images in torchvision's ImageFolder layout: ``DIR/train/CLASS/*`` and ``DIR/test/CLASS/*``.

Either split may be missing. The labels are the positions of the class folders' names in sorted
order (the union over both splits, so a class missing from one split keeps its label), and the images
of a split are read in sorted order of (class, path inside the class folder), so an extraction's rows
are reproducible. Each image is resized (shorter side to `resize`), centre-cropped to `image_size`
square and normalised per channel, torchvision's evaluation transform for ImageNet models.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from mitosis_cli.errors import InputError

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
IMAGENET_MEAN = (0.485, 0.456, 0.406)  # torchvision's ImageNet weights were trained with these
IMAGENET_STD = (0.229, 0.224, 0.225)
RESIZE_RATIO = 256 / 224  # resize 256, crop 224: torchvision's ImageNet evaluation transform


def default_resize(image_size: int) -> int:
    """The shorter side before the centre crop: `image_size` x 256/224 (256 for 224)."""
    return round(image_size * RESIZE_RATIO)


def _images(folder: Path) -> list[Path]:
    """Image files under `folder` (any depth, links followed, hidden entries skipped), sorted by path.

    Each must be a regular file: a FIFO would block the first read forever, a broken link fail it.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        found += [Path(dirpath, f) for f in filenames if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith(".")]
    for path in found:
        try:
            regular = stat.S_ISREG(os.stat(path).st_mode)
        except OSError as err:
            raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
        if not regular:
            raise InputError(f"{path}: not a regular file (a FIFO, device or socket); an image folder holds image files")
    return sorted(found)


@dataclass(frozen=True)
class ImageFolder:
    """The images of a folder in ImageFolder layout, scanned (no image is opened).

    Attributes
    ----------
    root : Path
        The folder holding ``train/`` and/or ``test/``.
    class_names : tuple of str
        Sorted class folder names; label i is class_names[i].
    files : mapping
        Split -> ((image path, label), ...) in reading order.
    """

    root: Path
    class_names: tuple[str, ...]
    files: Mapping[str, tuple[tuple[Path, int], ...]]

    @classmethod
    def scan(cls, root: Path) -> ImageFolder:
        """List the splits, classes and images; one `InputError` line for a folder that does not fit the layout."""
        layout = f"expected {root}/train/CLASS/IMAGE and/or {root}/test/CLASS/IMAGE"
        if not root.is_dir():
            what = "no such folder" if not os.path.exists(root) else "not a folder"
            raise InputError(f"--images {root}: {what}", hint=layout)
        splits = [s for s in SPLITS if (root / s).is_dir()]
        if not splits:
            raise InputError(f"{root}: no train/ or test/ folder", hint=layout)
        classes: dict[str, list[str]] = {}
        for split in splits:
            names = sorted(d.name for d in (root / split).iterdir() if d.is_dir() and not d.name.startswith("."))
            if not names:
                raise InputError(f"{root / split}: no class folders (one folder per class, holding its images)", hint=layout)
            classes[split] = names
        class_names = tuple(sorted({name for names in classes.values() for name in names}))
        label = {name: i for i, name in enumerate(class_names)}
        files: dict[str, tuple[tuple[Path, int], ...]] = {}
        for split in splits:
            files[split] = tuple((path, label[name]) for name in classes[split] for path in _images(root / split / name))
            if not files[split]:
                raise InputError(f"{root / split}: no images in its class folders ({', '.join(IMAGE_EXTENSIONS)})")
        return cls(root, class_names, files)

    def digest(self) -> str:
        """sha256 of every image's split, path (class folder included) and size: what the extraction's stamp holds of the folder.

        Cheap (file names and sizes, no image read) and independent of where the folder lies; an image
        edited in place to the same size goes unnoticed (`--force` redoes the extraction).
        """
        digest = hashlib.sha256()
        for split, files in sorted(self.files.items()):
            for path, _ in files:
                digest.update(f"{split}\t{path.relative_to(self.root / split).as_posix()}\t{path.stat().st_size}\n".encode())
        return digest.hexdigest()


@dataclass(frozen=True)
class ImageTransform:
    """Resize the shorter side to `resize`, centre-crop `image_size` square, scale to [0, 1], normalise per channel.

    The number of channels is that of `mean` (1: greyscale, 3: RGB); images are converted to it.
    """

    image_size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def check(self) -> None:
        if len(self.mean) != len(self.std) or len(self.mean) not in (1, 3):
            raise InputError(f"--mean and --std need 1 (greyscale) or 3 (RGB) values each, got {len(self.mean)} and "
                             f"{len(self.std)}")
        if min(self.std) <= 0:
            raise InputError(f"--std {','.join(map(str, self.std))}: every value must be positive")
        if self.image_size < 1 or self.resize < self.image_size:
            raise InputError(f"--image-size {self.image_size} and --resize {self.resize}: need 1 <= image size <= resize")

    def __call__(self, path: Path) -> torch.Tensor:
        from PIL import Image
        from torchvision.transforms import functional

        with Image.open(path) as image:
            image = image.convert("L" if len(self.mean) == 1 else "RGB")
            image = functional.center_crop(functional.resize(image, self.resize), [self.image_size, self.image_size])
        return functional.normalize(functional.to_tensor(image), list(self.mean), list(self.std))


class ImageSplit(torch.utils.data.Dataset):
    """One split's images as (tensor (C, S, S), label, readable) items for a DataLoader.

    An image that cannot be decoded gives a zero tensor and ``readable`` False instead of raising, so the
    reader names the file in one line whether or not the DataLoader runs in worker processes.
    """

    def __init__(self, files: tuple[tuple[Path, int], ...], transform: ImageTransform) -> None:
        self.files = files
        self.transform = transform

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int, bool]:
        path, label = self.files[index]
        try:
            return self.transform(path), label, True
        except (OSError, ValueError, SyntaxError):  # PIL: UnidentifiedImageError is an OSError; broken files vary
            size = self.transform.image_size
            return torch.zeros(len(self.transform.mean), size, size), label, False
