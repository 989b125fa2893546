"""Write released (transformed) data back in the input's own layout.

:func:`write_released` consumes ``(indices, x)`` batches, writing each sample as it arrives, so
the dataset is never held in memory. Everything goes into a temporary sibling folder that is
``os.replace``-d into ``out_dir`` only once complete: a crash never leaves a half-written release
that looks finished. Label files (``attributes.csv``, ``speakers.csv`` ...) are rewritten from the
input's raw rows for exactly the samples written, so loading the release gives the same schema.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import zipfile
from pathlib import Path
from typing import Iterable

import numpy as np

from privkit.data.datasets import AttributeDataset
from privkit.errors import ConfigError, ResourceError, SchemaError
from privkit.registry import Registry

#: Registry: layout name -> writer class.
WRITERS = Registry("writable layout")


def register_writer(layout: str):
    """Class decorator registering a :class:`LayoutWriter` for ``layout``."""
    return WRITERS.register(layout)


class LayoutWriter:
    """Writes samples of ``base`` (the full dataset) into folder ``out``.

    ``write(base_indices, x)`` is called once per batch; ``finish()`` writes the label files.
    """

    needs_meta = True

    def __init__(self, base: AttributeDataset, out: Path):
        self.base, self.out = base, out
        self.meta = getattr(base, "meta", None)
        if self.needs_meta and self.meta is None:
            raise ConfigError(f"cannot write {base.schema.layout} data that was not loaded from a "
                              f"{base.schema.layout} folder; release it as npz instead")
        self.written: dict[int, str] = {}  # base index -> relative path written

    def check_shape(self, x: np.ndarray) -> None:
        if tuple(x.shape[1:]) != tuple(self.base.schema.input_shape):
            raise SchemaError(f"released samples have shape {list(x.shape[1:])} but {self.base.schema.layout} "
                              f"data needs {list(self.base.schema.input_shape)}; keep the input shape")

    def write(self, base_indices: np.ndarray, x: np.ndarray) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def finish(self) -> None:
        pass

    def sidecar(self, **updates) -> None:
        d = dict((self.meta or {}).get("sidecar") or {})
        d.update(updates)
        (self.out / "privkit_layout.json").write_text(json.dumps(d, indent=2, sort_keys=True) + "\n")


def _png_rel(rel: str) -> str:
    return str(Path(rel).with_suffix(".png").as_posix())


def _save_png(path: Path, x: np.ndarray) -> None:
    from PIL import Image

    arr = np.clip(np.round(np.nan_to_num(x, nan=0.0) * 255.0), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.shape[0] == 1:
        Image.fromarray(arr[0], mode="L").save(path)
    else:
        Image.fromarray(arr.transpose(1, 2, 0), mode="RGB").save(path)


class _ImageWriter(LayoutWriter):
    def write(self, base_indices, x):
        self.check_shape(x)
        for i, xi in zip(base_indices, x):
            rel = _png_rel(self.meta["relpaths"][i])
            _save_png(self.out / rel, xi)
            self.written[int(i)] = rel


@register_writer("image_csv")
class ImageCsvWriter(_ImageWriter):
    """PNG images at the input's relative paths (suffix ``.png``) + ``attributes.csv``."""

    def finish(self):
        import csv

        pcol = self.meta["path_column"]
        with open(self.out / "attributes.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(self.meta["header"])
            for i in sorted(self.written):
                row = list(self.meta["rows"][i])
                row[pcol] = self.written[i]
                w.writerow(row)


@register_writer("celeba")
class CelebaWriter(_ImageWriter):
    """PNG images in ``img_align_celeba/`` + ``list_attr_celeba.txt`` (+ ``identity_CelebA.txt``)."""

    def finish(self):
        order = sorted(self.written)
        names = [Path(self.written[i]).name for i in order]
        lines = [str(len(order)), " ".join(self.meta["attr_names"])]
        lines += [f"{n} " + " ".join(f"{int(v):2d}" for v in self.meta["raw"][i]) for n, i in zip(names, order)]
        (self.out / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
        if self.meta.get("identity") is not None:
            ident = [f"{n} {self.meta['identity'][i]}" for n, i in zip(names, order)]
            (self.out / "identity_CelebA.txt").write_text("\n".join(ident) + "\n")


@register_writer("utkface")
class UtkfaceWriter(_ImageWriter):
    """PNG images with the input's AGE_GENDER_RACE_DATETIME names (labels live in the names)."""


class _AudioWriter(LayoutWriter):
    def write(self, base_indices, x):
        import soundfile as sf

        self.check_shape(x)
        rate = int(self.base.schema.sample_rate)
        for i, xi in zip(base_indices, x):
            rel = self.meta["relpaths"][i]
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            # float WAV: released audio may leave [-1, 1] and must survive the round trip unclipped
            sf.write(str(path), np.nan_to_num(xi.reshape(-1)).astype(np.float32), rate, subtype="FLOAT")
            self.written[int(i)] = rel

    def audio_sidecar(self):
        self.sidecar(sample_rate=int(self.base.schema.sample_rate),
                     duration=float(self.base.schema.extra.get("duration", 1.0)))


@register_writer("fsdd")
class FsddWriter(_AudioWriter):
    """WAVs at ``recordings/`` with the input's names + ``speakers.csv`` + sidecar (rate, duration, labels)."""

    def finish(self):
        import csv

        (self.out / "recordings").mkdir(exist_ok=True)
        speakers = {self.meta["speakers"][i] for i in self.written}
        with open(self.out / "speakers.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(self.meta["speakers_header"])
            for s, row in self.meta["speakers_rows"].items():
                if s in speakers:
                    w.writerow(row)
        self.audio_sidecar()


@register_writer("audiomnist")
class AudiomnistWriter(_AudioWriter):
    """WAVs at ``NN/`` with the input's names + ``audioMNIST_meta.txt`` + sidecar."""

    def finish(self):
        speakers = {self.meta["speakers"][i] for i in self.written}
        table = {s: v for s, v in self.meta["table"].items() if s in speakers}
        (self.out / "audioMNIST_meta.txt").write_text(json.dumps(table, indent=4) + "\n")
        self.audio_sidecar()


@register_writer("motionsense")
class MotionsenseWriter(LayoutWriter):
    """Each window as its own recording ``A_DeviceMotion_data/{act}_{trial}/sub_{k}_w{start}.csv``.

    ``start`` is the window's first row in the original recording. The six used channels are filled,
    the others zero; a sidecar sets ``window = stride =`` the window length so that loading the
    release gives exactly one window per file and the input's schema.
    """

    def write(self, base_indices, x):
        from privkit.data.loaders.motion import CHANNELS, FULL_HEADER, MOTION_DIR

        self.check_shape(x)
        cols = [FULL_HEADER.index(c) for c in CHANNELS]
        window = x.shape[2]
        for i, xi in zip(base_indices, x):
            rel_file = self.meta["files"][self.meta["file_of"][i]]
            trial, name = rel_file.split("/")
            m = re.match(r"^sub_(\d+)(?:_w(\d+))?\.csv$", name)
            start = int(m.group(2) or 0) + int(self.meta["start_of"][i])
            rel = f"{MOTION_DIR}/{trial}/sub_{m.group(1)}_w{start}.csv"
            table = np.zeros((window, len(FULL_HEADER)), dtype=np.float64)
            table[:, 0] = np.arange(window)
            table[:, cols] = np.nan_to_num(xi).T
            path = self.out / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8") as f:
                f.write(",".join(FULL_HEADER) + "\n")
                np.savetxt(f, table, delimiter=",", fmt=["%d"] + ["%.9g"] * (len(FULL_HEADER) - 1))
            self.written[int(i)] = rel

    def finish(self):
        import csv

        from privkit.data.loaders.motion import MOTION_DIR

        (self.out / MOTION_DIR).mkdir(exist_ok=True)
        header = self.meta["subjects_header"]
        subjects = {re.match(r"^.*/sub_(\d+)_w", r).group(1) for r in self.written.values()}
        with open(self.out / "data_subjects_info.csv", "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(header)
            for code, row in self.meta["subjects_rows"].items():
                if code in subjects:
                    w.writerow(row)
        window = int(self.base.schema.input_shape[1])
        self.sidecar(window=window, stride=window)


@register_writer("npz")
class NpzWriter(LayoutWriter):
    """One uncompressed ``.npz`` (so the loader memory-maps ``x``), streamed: samples are appended
    to a raw file and copied into the archive's ``x.npy`` at the end. Works for any dataset: without
    raw attribute arrays the class names are written."""

    needs_meta = False

    def __init__(self, base, out):
        super().__init__(base, out)
        self.raw_path = out / ".x.raw"
        self.raw = open(self.raw_path, "wb")
        self.order: list[int] = []
        self.shape: tuple[int, ...] | None = None

    def write(self, base_indices, x):
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
        elif tuple(x.shape[1:]) != self.shape:
            raise SchemaError(f"released batches change sample shape from {list(self.shape)} to "
                              f"{list(x.shape[1:])}; every sample must have one shape")
        self.raw.write(np.ascontiguousarray(x, dtype=np.float32).tobytes())
        self.order.extend(int(i) for i in base_indices)

    def finish(self):
        self.raw.close()
        if self.shape is None:
            raise ConfigError("no samples were released; nothing to write")
        order = np.asarray(self.order, dtype=np.int64)
        schema = self.base.schema
        if self.meta is not None:
            arrays = {k: np.asarray(v)[order] for k, v in self.meta["arrays"].items()}
            scalars = dict(self.meta["scalars"])
            name = Path(self.meta["file"]).name
        else:
            arrays = {a.name: np.asarray(a.classes)[self.base.labels[order, j]] for j, a in enumerate(schema.attributes)}
            scalars = {"modality": np.asarray(schema.modality)}
            if schema.sample_rate is not None:
                scalars["sample_rate"] = np.asarray(int(schema.sample_rate))
            if schema.identity_attribute is not None:
                scalars["identity"] = np.asarray(schema.identity_attribute)
            name = "data.npz"
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (len(order), *self.shape)}
        with zipfile.ZipFile(self.out / name, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            with zf.open("x.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array_header_2_0(member, header)
                with open(self.raw_path, "rb") as raw:
                    shutil.copyfileobj(raw, member, length=1 << 22)
            for key, arr in {**arrays, **scalars}.items():
                with zf.open(f"{key}.npy", "w") as member:
                    np.lib.format.write_array(member, np.asarray(arr), allow_pickle=False)
        self.raw_path.unlink()


def write_released(dataset: AttributeDataset, batches: Iterable[tuple], out_dir: str | Path) -> Path:
    """Write released samples in the input's own layout.

    Parameters
    ----------
    dataset : AttributeDataset
        The data that was transformed (a loaded dataset or a subset of one).
    batches : iterable of ``(indices, x)``
        ``indices`` into ``dataset``; ``x`` a tensor or array of the samples to write.
    out_dir : path
        Must not exist yet; created atomically when everything is written.

    Returns
    -------
    Path
        ``out_dir``, loadable with :func:`privkit.data.load_dataset`.
    """
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists():
        raise ConfigError(f"output folder {out_dir} already exists; choose a new --out or remove it")
    base, base_idx = dataset.base, np.asarray(dataset.base_indices)
    layout = base.schema.layout
    WRITERS.lookup(layout, f"data in layout {layout!r} cannot be written back; convert it to npz first")
    tmp = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    try:
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        writer = WRITERS[layout](base, tmp)
        for indices, x in batches:
            idx = np.asarray(indices, dtype=np.int64).reshape(-1)
            if idx.size and (idx.min() < 0 or idx.max() >= len(dataset)):
                raise ConfigError(f"released batch index {int(idx.max())} is outside the dataset's {len(dataset)} samples")
            x = x.detach().cpu().numpy() if hasattr(x, "detach") else np.asarray(x)
            if len(x) != len(idx):
                raise ConfigError(f"a released batch has {len(idx)} indices but {len(x)} samples; they must match")
            writer.write(base_idx[idx], np.asarray(x, dtype=np.float32))
        writer.finish()
        os.replace(tmp, out_dir)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ResourceError(f"cannot write released data to {out_dir}: {e.strerror or e}; check free space and "
                            f"permissions") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)  # never leave a partial release behind, then re-raise
        raise
    return out_dir


__all__ = ["WRITERS", "register_writer", "write_released", "LayoutWriter"]
