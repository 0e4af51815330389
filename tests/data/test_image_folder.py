"""Image folders in ImageFolder layout: classes and labels, the order of the images, the transform, the digest."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mitosis_cli.data.image_folder import ImageFolder, ImageSplit, ImageTransform, default_resize
from mitosis_cli.errors import InputError


def _image(path: Path, size: tuple[int, int] = (10, 12), seed: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)


def test_labels_are_sorted_class_names_over_both_splits(tmp_path: Path) -> None:
    for rel in ["train/zebra/b.png", "train/zebra/a.jpg", "train/ant/x/deep.png", "test/mole/1.png", "test/ant/2.PNG"]:
        _image(tmp_path / rel)
    (tmp_path / "train" / "ant" / "notes.txt").write_text("not an image")
    (tmp_path / "train" / ".cache").mkdir()  # hidden folders are no class
    folder = ImageFolder.scan(tmp_path)
    assert folder.class_names == ("ant", "mole", "zebra")
    names = {split: [(p.relative_to(tmp_path).as_posix(), y) for p, y in files] for split, files in folder.files.items()}
    assert names == {"train": [("train/ant/x/deep.png", 0), ("train/zebra/a.jpg", 2), ("train/zebra/b.png", 2)],
                     "test": [("test/ant/2.PNG", 0), ("test/mole/1.png", 1)]}


def test_either_split_may_be_missing(tmp_path: Path) -> None:
    _image(tmp_path / "test" / "a" / "0.png")
    folder = ImageFolder.scan(tmp_path)
    assert list(folder.files) == ["test"] and folder.class_names == ("a",)


@pytest.mark.parametrize("layout, message", [
    ([], "no such folder"),
    (["other/a/0.png"], "no train/ or test/ folder"),
    (["train/0.png"], "no class folders"),
    (["train/a/notes.txt"], "no images in its class folders"),
])
def test_folders_that_do_not_fit_the_layout(tmp_path: Path, layout: list[str], message: str) -> None:
    root = tmp_path / "images"
    for rel in layout:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"x")
    with pytest.raises(InputError, match=message):
        ImageFolder.scan(root)


def test_digest_follows_names_and_sizes_not_the_location(tmp_path: Path) -> None:
    _image(tmp_path / "a" / "train" / "c" / "0.png")
    _image(tmp_path / "a" / "train" / "d" / "1.png", seed=1)
    first = ImageFolder.scan(tmp_path / "a").digest()
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    assert ImageFolder.scan(tmp_path / "b").digest() == first  # moved or copied: the same images
    (tmp_path / "b" / "train" / "d" / "1.png").rename(tmp_path / "b" / "train" / "c" / "1.png")  # relabelled
    assert ImageFolder.scan(tmp_path / "b").digest() != first
    _image(tmp_path / "a" / "train" / "c" / "0.png", size=(11, 12))  # another size
    assert ImageFolder.scan(tmp_path / "a").digest() != first


def test_transform_resizes_crops_and_normalises(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)  # 40 high, 30 wide: the shorter side is the width
    Image.fromarray(pixels).save(tmp_path / "x.png")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = ImageTransform(24, 30, mean, std)(tmp_path / "x.png").numpy()
    # resize to the shorter side 30 changes nothing; the centre crop 24 x 24 drops 8 rows and 3 columns each side
    expected = (pixels[8:32, 3:27] / 255.0 - np.array(mean)) / np.array(std)
    np.testing.assert_allclose(got, expected.transpose(2, 0, 1), atol=1e-6)
    grey = ImageTransform(24, 30, (0.5,), (0.5,))(tmp_path / "x.png")
    assert grey.shape == (1, 24, 24)
    assert default_resize(224) == 256


def test_unreadable_images_are_flagged_not_raised(tmp_path: Path) -> None:
    _image(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    split = ImageSplit(((tmp_path / "ok.png", 0), (tmp_path / "broken.png", 1)), ImageTransform(8, 8, (0.5,) * 3, (0.5,) * 3))
    (x0, y0, ok0), (x1, y1, ok1) = split[0], split[1]
    assert ok0 and not ok1 and (y0, y1) == (0, 1) and x1.shape == x0.shape == (3, 8, 8)


@pytest.mark.parametrize("mean, std, size, resize, message", [
    ((0.5, 0.5), (0.5, 0.5), 8, 8, "1 \\(greyscale\\) or 3 \\(RGB\\)"),
    ((0.5,), (0.0,), 8, 8, "must be positive"),
    ((0.5,), (0.5,), 16, 8, "image size <= resize"),
])
def test_transform_options_checked(mean: tuple[float, ...], std: tuple[float, ...], size: int, resize: int, message: str) -> None:
    with pytest.raises(InputError, match=message):
        ImageTransform(size, resize, mean, std).check()
