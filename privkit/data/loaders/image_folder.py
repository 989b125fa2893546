"""Image layouts: ``image_csv`` (any folder + ``attributes.csv``), ``celeba`` and ``utkface``.

Samples are float32 arrays in ``[0, 1]`` of shape ``(C, H, W)``: ``C = 1`` for greyscale and
``C = 3`` for colour, decided from the first image unless ``channels=`` is given. All images are
resized (bilinear) to ``image_size = (H, W)`` when given, else to the first image's size.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from privkit.data.loaders import (
    IDENTITY_NAMES, Column, LayoutDataset, LoadOptions, build_attributes, check_missing, natural_key, read_csv,
    read_text, register_layout, report, require_dir, require_file, safe_path,
)
from privkit.data.schema import Schema
from privkit.errors import ConfigError, DataError, SchemaError

IMAGE_SUFFIXES = (".png", ".pgm", ".ppm", ".pbm", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N", "F")
UTK_GENDERS = {"0": "male", "1": "female"}
UTK_RACES = {"0": "White", "1": "Black", "2": "Asian", "3": "Indian", "4": "Others"}
UTK_AGE_EDGES = [20.0, 40.0, 60.0]
CELEBA_ATTR_FILE = "list_attr_celeba.txt"
CELEBA_IDENTITY_FILE = "identity_CelebA.txt"


def _pil():
    from PIL import Image

    return Image


def probe_image(path: Path) -> tuple[str, tuple[int, int]]:
    """Mode and ``(width, height)`` of an image, read from its header (cheap).

    ``verify()`` additionally checks chunk checksums for PNG; anything the decoder rejects becomes
    a :class:`DataError` naming the file.
    """
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                mode, size = img.mode, img.size
                img.verify()
    except Exception as e:  # PIL raises many types (OSError, SyntaxError, struct.error ...) for bad files
        raise DataError(f"image {path} is corrupt or not an image ({type(e).__name__}: {e}); "
                        f"replace or remove it") from e
    if size[0] < 1 or size[1] < 1:
        raise DataError(f"image {path} has an empty size {size}; replace or remove it")
    return mode, size


def read_image(path: Path, channels: int, size_hw: tuple[int, int]) -> np.ndarray:
    """Decode ``path`` into a float32 ``(channels, H, W)`` array in ``[0, 1]``."""
    Image = _pil()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as img:
                img.load()
                if channels == 1:
                    if img.mode.startswith("I") or img.mode == "F":
                        scale = 65535.0 if img.mode.startswith("I") else 1.0
                        img = img.convert("F")
                        if img.size != (size_hw[1], size_hw[0]):
                            img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
                        arr = np.clip(np.asarray(img, dtype=np.float32) / scale, 0.0, 1.0)[None]
                        return np.ascontiguousarray(arr, dtype=np.float32)
                    img = img.convert("L")
                else:
                    img = img.convert("RGB")
                if img.size != (size_hw[1], size_hw[0]):
                    img = img.resize((size_hw[1], size_hw[0]), Image.BILINEAR)
                arr = np.asarray(img, dtype=np.float32) / 255.0
    except Exception as e:  # any decoder failure is a bad file, reported by name
        raise DataError(f"cannot decode image {path} ({type(e).__name__}: {e}); the file is corrupt or "
                        f"truncated, replace or remove it") from e
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32)


class ImageReader:
    """Callable ``i -> (C, H, W)`` array reading ``paths[i]``; picklable for DataLoader workers."""

    def __init__(self, paths: Sequence[str], channels: int, size_hw: tuple[int, int]):
        self.paths, self.channels, self.size_hw = list(paths), int(channels), tuple(size_hw)

    def __call__(self, i: int) -> np.ndarray:
        return read_image(Path(self.paths[i]), self.channels, self.size_hw)


def probe_images(paths: Sequence[Path], opts: LoadOptions) -> tuple[int, tuple[int, int]]:
    """Check every image header; return ``(channels, (H, W))`` for the dataset."""
    first_mode, first_size = None, None
    for k, p in enumerate(paths):
        mode, size = probe_image(p)
        if first_mode is None:
            first_mode, first_size = mode, size
        report(opts.progress, k + 1, len(paths))
    channels = opts.extra.get("channels")
    if channels is None:
        channels = 1 if first_mode in GREY_MODES else 3
    if channels not in (1, 3):
        raise ConfigError(f"channels={channels!r} is not supported; use 1 (greyscale) or 3 (RGB)")
    size_hw = tuple(opts.image_size) if opts.image_size is not None else (first_size[1], first_size[0])
    return int(channels), size_hw


def _image_dataset(layout: str, root: Path, rel_ids: Sequence[str], paths: Sequence[Path], columns: Sequence[Column],
                   opts: LoadOptions, source: str, meta: dict) -> LayoutDataset:
    if not paths:
        raise DataError(f"the dataset at {root} lists no images; add samples")
    attributes, labels, extra = build_attributes(columns, opts.bins, rel_ids, source)
    if not attributes:
        raise DataError(f"{source} has no attribute with more than one value; add attribute columns")
    channels, size_hw = probe_images(paths, opts)
    schema = Schema("image", attributes, (channels, *size_hw), layout=layout, extra=extra)
    abs_paths = [str(Path(p).absolute()) for p in paths]
    return LayoutDataset(schema, labels, list(rel_ids), ImageReader(abs_paths, channels, size_hw), str(root),
                         abs_paths, meta)


# -- image_csv -----------------------------------------------------------------------------------

def _detect_image_csv(path: Path) -> bool:
    return path.is_dir() and (path / "attributes.csv").is_file()


@register_layout("image_csv", detect=_detect_image_csv, modality="image", options=("image_size",),
                 extra_options=("channels",), priority=10,
                 description="folder with attributes.csv (path,<attr>,...) and the images it lists")
def load_image_csv(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load ``root/attributes.csv`` (header ``path,<attr>,...``) and the images it lists.

    A column named identity / person / subject / speaker becomes the identity attribute.
    """
    require_dir(root, "image_csv")
    csv_path = require_file(root / "attributes.csv", "attribute table")
    header, rows = read_csv(csv_path, required=["path"])
    if not rows:
        raise DataError(f"{csv_path} has a header but no rows; add one row per image")
    pcol = header.index("path")
    rel_ids = [r[pcol].replace("\\", "/") for r in rows]
    paths = [safe_path(root, rel, "image path") for rel in rel_ids]
    check_missing(paths, csv_path)
    identity_seen = False
    columns = []
    for j, name in enumerate(header):
        if j == pcol:
            continue
        is_identity = name.lower() in IDENTITY_NAMES and not identity_seen
        identity_seen |= is_identity
        columns.append(Column(name, [r[j] for r in rows], identity=is_identity))
    meta = {"header": header, "rows": rows, "path_column": pcol, "relpaths": rel_ids}
    return _image_dataset("image_csv", root, rel_ids, paths, columns, opts, str(csv_path), meta)


# -- celeba --------------------------------------------------------------------------------------

def _detect_celeba(path: Path) -> bool:
    return path.is_dir() and (path / CELEBA_ATTR_FILE).is_file()


def parse_celeba_attributes(path: Path) -> tuple[list[str], list[str], list[list[str]]]:
    """``(attribute names, image names, rows of -1/1 strings)`` of ``list_attr_celeba.txt``."""
    lines = [ln.split() for ln in read_text(path).splitlines()]
    lines = [ln for ln in lines if ln]
    if len(lines) < 2:
        raise DataError(f"{path} needs a count line, an attribute-name line and one line per image")
    try:
        count = int(lines[0][0])
    except ValueError:
        raise DataError(f"{path} line 1 must be the number of images, not {lines[0][0]!r}") from None
    names = lines[1]
    if len(set(names)) != len(names):
        raise DataError(f"{path} line 2 repeats an attribute name; name each attribute once")
    images, rows = [], []
    for lineno, ln in enumerate(lines[2:], start=3):
        if len(ln) != len(names) + 1:
            raise DataError(f"{path} line {lineno} has {len(ln) - 1} values but line 2 names {len(names)} "
                            f"attributes; fix that line")
        images.append(ln[0])
        rows.append(ln[1:])
    if count != len(images):
        raise DataError(f"{path} says {count} images on line 1 but lists {len(images)}; fix the count")
    if not images:
        raise DataError(f"{path} lists no images; add one line per image")
    return names, images, rows


@register_layout("celeba", detect=_detect_celeba, modality="image", options=("image_size",),
                 extra_options=("channels", "attributes"), priority=20,
                 description="CelebA: list_attr_celeba.txt + img_align_celeba/")
def load_celeba(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load CelebA: binary attributes from ``list_attr_celeba.txt`` (``-1`` no, ``1`` yes), images
    from ``img_align_celeba/`` (or the folder itself), identities from ``identity_CelebA.txt`` if
    present. ``attributes=[...]`` keeps a subset."""
    require_dir(root, "CelebA")
    attr_path = root / CELEBA_ATTR_FILE
    names, images, rows = parse_celeba_attributes(attr_path)
    keep = opts.extra.get("attributes")
    if keep is not None:
        keep = [keep] if isinstance(keep, str) else list(keep)
        for k in keep:
            if k not in names:
                raise SchemaError(f"unknown CelebA attribute {k!r}; {attr_path} has: {', '.join(names)}")
    keep_idx = [names.index(k) for k in keep] if keep else list(range(len(names)))
    image_dir = "img_align_celeba" if (root / "img_align_celeba").is_dir() else ""
    rel_ids = [f"{image_dir}/{n}" if image_dir else n for n in images]
    paths = [safe_path(root, rel, "image name") for rel in rel_ids]
    check_missing(paths, attr_path)
    sign = {"-1": "no", "1": "yes", "+1": "yes"}
    columns = []
    identity_raw = None
    id_path = root / CELEBA_IDENTITY_FILE
    if id_path.is_file():
        ids = {}
        for lineno, ln in enumerate(read_text(id_path).splitlines(), start=1):
            parts = ln.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataError(f"{id_path} line {lineno} must be 'IMAGE IDENTITY'; fix that line")
            ids[parts[0]] = parts[1]
        missing = [n for n in images if n not in ids]
        if missing:
            raise DataError(f"{id_path} gives no identity for {len(missing)} image(s), first: {missing[0]}; add them")
        identity_raw = [ids[n] for n in images]
        columns.append(Column("identity", identity_raw, identity=True))
    for j in keep_idx:
        columns.append(Column(names[j], [r[j] for r in rows], classes=("no", "yes"), aliases=sign))
    meta = {"attr_names": [names[j] for j in keep_idx], "raw": [[r[j] for j in keep_idx] for r in rows],
            "image_names": images, "image_dir": image_dir, "identity": identity_raw, "relpaths": rel_ids}
    return _image_dataset("celeba", root, rel_ids, paths, columns, opts, str(attr_path), meta)


# -- utkface -------------------------------------------------------------------------------------

def _image_files(root: Path) -> list[Path]:
    return sorted((p for p in root.iterdir() if p.is_file() and not p.name.startswith(".")
                   and p.suffix.lower() in IMAGE_SUFFIXES), key=lambda p: natural_key(p.name))


def is_utk_name(name: str) -> bool:
    """Whether ``name`` reads ``{age}_{gender}_{race}_{datetime}.ext`` with gender 0/1 and race 0-4."""
    parts = name.split("_")
    return (len(parts) >= 4 and parts[0].isdigit() and parts[1] in UTK_GENDERS and parts[2] in UTK_RACES
            and bool(parts[3].split(".")[0]))


def parse_utk_name(name: str) -> tuple[str, str, str]:
    """``(age, gender, race)`` from ``{age}_{gender}_{race}_{datetime}.jpg[.chip.jpg]``."""
    parts = name.split("_")
    if not is_utk_name(name):
        raise DataError(f"UTKFace file name {name!r} is not AGE_GENDER_RACE_DATETIME.jpg (gender 0/1, race 0-4); "
                        f"rename or remove it")
    return parts[0], parts[1], parts[2]


def _detect_utkface(path: Path) -> bool:
    if not path.is_dir():
        return False
    files = _image_files(path)
    if not files:
        return False
    # A few malformed names still make a UTKFace folder (the loader then names them); most must match.
    good = sum(is_utk_name(p.name) for p in files)
    return good * 2 >= len(files)


@register_layout("utkface", detect=_detect_utkface, modality="image", options=("image_size",),
                 extra_options=("channels",), priority=90,
                 description="UTKFace: folder of AGE_GENDER_RACE_DATETIME.jpg images")
def load_utkface(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load a UTKFace folder; age is binned (default ``<20, 20-40, 40-60, >=60``; ``bins=`` overrides)."""
    require_dir(root, "UTKFace")
    files = _image_files(root)
    if not files:
        raise DataError(f"{root} holds no images; a UTKFace folder holds AGE_GENDER_RACE_DATETIME.jpg files")
    parsed = [parse_utk_name(p.name) for p in files]
    names = [p.name for p in files]
    columns = [
        Column("age", [a for a, _, _ in parsed], default_edges=UTK_AGE_EDGES),
        Column("gender", [g for _, g, _ in parsed], classes=("male", "female"), aliases=UTK_GENDERS),
        Column("race", [r for _, _, r in parsed], classes=tuple(UTK_RACES.values()), aliases=UTK_RACES),
    ]
    paths = [safe_path(root, n, "image name") for n in names]
    meta = {"relpaths": names}
    return _image_dataset("utkface", root, names, paths, columns, opts, str(root), meta)
