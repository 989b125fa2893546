"""Fuzzing every loader: damaged files, garbage cells and odd names raise only DataError/SchemaError.

Each example copies a small valid dataset, damages one file (random bytes, truncation, a byte
flip, a garbage CSV cell or label line) and then loads it and reads every sample. Loading may
succeed (the damage was harmless) or fail, but only with a privkit error that names the problem.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from privkit.data import load_dataset
from privkit.errors import DataError, SchemaError

sys.path.insert(0, str(Path(__file__).parent))
from test_loaders import BUILDERS  # noqa: E402

FUZZ = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)

_TEMPLATES: dict[str, Path] = {}
_TEMPLATE_DIR = Path(tempfile.mkdtemp(prefix="privkit-fuzz-"))
atexit.register(shutil.rmtree, _TEMPLATE_DIR, ignore_errors=True)


def template(layout: str) -> Path:
    if layout not in _TEMPLATES:
        _TEMPLATES[layout] = BUILDERS[layout](_TEMPLATE_DIR / layout)
    return _TEMPLATES[layout]


def load_and_read_all(root: Path, **kwargs) -> None:
    try:
        ds = load_dataset(root, **kwargs)
        for i in range(len(ds)):
            ds[i]
    except (DataError, SchemaError) as e:
        msg = str(e)
        assert msg and "\n" not in msg  # one line


def files_of(root: Path, suffixes) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)


damage = st.one_of(
    st.tuples(st.just("replace"), st.binary(max_size=300)),
    st.tuples(st.just("truncate"), st.floats(0.0, 0.99)),
    st.tuples(st.just("flip"), st.floats(0.0, 0.999), st.integers(1, 255)),
)


def apply_damage(path: Path, how) -> None:
    data = path.read_bytes()
    if how[0] == "replace":
        path.write_bytes(how[1])
    elif how[0] == "truncate":
        path.write_bytes(data[: int(len(data) * how[1])])
    else:
        pos = int(len(data) * how[1])
        path.write_bytes(data[:pos] + bytes([data[pos] ^ how[2]]) + data[pos + 1:])


DATA_FILES = {
    "image_csv": (".png",), "celeba": (".jpg",), "utkface": (".jpg",), "fsdd": (".wav",),
    "audiomnist": (".wav",), "motionsense": (".csv",), "npz": (".npz",),
}
LABEL_FILES = {
    "image_csv": "attributes.csv", "celeba": "list_attr_celeba.txt", "fsdd": "speakers.csv",
    "audiomnist": "audioMNIST_meta.txt", "motionsense": "data_subjects_info.csv",
}


def _copy(layout: str, tmp: Path) -> Path:
    root = tmp / "ds"
    shutil.copytree(template(layout), root, symlinks=True)
    return root


@pytest.mark.parametrize("layout", sorted(DATA_FILES))
@FUZZ
@given(which=st.integers(0, 50), how=damage)
def test_damaged_sample_file(layout, which, how):
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy(layout, Path(tmp))
        files = files_of(root, DATA_FILES[layout])
        if layout == "motionsense":
            files = [p for p in files if p.parent.name != root.name]
        apply_damage(files[which % len(files)], how)
        load_and_read_all(root)


cell_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)


@pytest.mark.parametrize("layout", sorted(LABEL_FILES))
@FUZZ
@given(line=st.integers(0, 30), cell=st.integers(0, 12), text=cell_text)
def test_garbage_label_cell(layout, line, cell, text):
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy(layout, Path(tmp))
        path = root / LABEL_FILES[layout]
        lines = path.read_text().splitlines()
        k = line % len(lines)
        sep = "," if path.suffix == ".csv" else (" " if path.suffix == ".txt" and layout == "celeba" else None)
        if sep is None:  # JSON: replace a random line
            lines[k] = text
        else:
            cells = lines[k].split(sep)
            cells[cell % len(cells)] = text
            lines[k] = sep.join(cells)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        load_and_read_all(root)


@pytest.mark.parametrize("layout", sorted(LABEL_FILES))
@FUZZ
@given(how=damage)
def test_damaged_label_file(layout, how):
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy(layout, Path(tmp))
        apply_damage(root / LABEL_FILES[layout], how)
        load_and_read_all(root)


name_text = st.text(alphabet="0123456789_-.abcXYZ ", min_size=1, max_size=30).filter(
    lambda s: s not in (".", "..") and "/" not in s)


@FUZZ
@given(name=name_text)
def test_odd_file_names(name):
    for layout, suffix in (("utkface", ".jpg"), ("fsdd", ".wav")):
        with tempfile.TemporaryDirectory() as tmp:
            root = _copy(layout, Path(tmp))
            files = files_of(root, (suffix,))
            files[0].rename(files[0].parent / (name + suffix))
            load_and_read_all(root)


@FUZZ
@given(rel=st.text(alphabet="ab./\\:~ ", min_size=1, max_size=15))
def test_csv_paths_never_escape(rel):
    with tempfile.TemporaryDirectory() as tmp:
        root = _copy("image_csv", Path(tmp))
        lines = (root / "attributes.csv").read_text().splitlines()
        lines[1] = rel.replace(",", "") + "," + lines[1].split(",", 1)[1]
        (root / "attributes.csv").write_text("\n".join(lines) + "\n")
        try:
            ds = load_dataset(root)
        except (DataError, SchemaError):
            return
        base = root.resolve()
        for p in ds.paths:
            Path(p).resolve().relative_to(base)  # raises if a path escaped the root
