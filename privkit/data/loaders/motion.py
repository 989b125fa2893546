"""MotionSense layout: ``A_DeviceMotion_data/{activity}_{trial}/sub_{k}.csv`` + ``data_subjects_info.csv``.

Each 50 Hz recording is cut into windows of ``window`` samples every ``stride`` samples; a sample is
a float32 ``(6, window)`` array of user acceleration x/y/z and rotation rate x/y/z. Every CSV is
parsed once at construction (to count its rows and check its values) and only the row count is
kept; windows are read lazily through a small LRU cache of parsed files.
"""

from __future__ import annotations

import io
import re
import warnings
from collections import OrderedDict
from pathlib import Path

import numpy as np

from privkit.data.bins import quantile_edges
from privkit.data.loaders import (
    Column, LayoutDataset, LoadOptions, build_attributes, natural_key, read_csv, read_sidecar, read_text,
    register_layout, report, require_dir, require_file,
)
from privkit.data.schema import Schema
from privkit.errors import DataError

MOTION_DIR = "A_DeviceMotion_data"
SUBJECTS_FILE = "data_subjects_info.csv"
ACTIVITIES = ("dws", "ups", "wlk", "jog", "sit", "std")
CHANNELS = ("userAcceleration.x", "userAcceleration.y", "userAcceleration.z",
            "rotationRate.x", "rotationRate.y", "rotationRate.z")
#: The full MotionSense DeviceMotion header (first column is the unnamed row index).
FULL_HEADER = ("", "attitude.roll", "attitude.pitch", "attitude.yaw", "gravity.x", "gravity.y", "gravity.z",
               "rotationRate.x", "rotationRate.y", "rotationRate.z",
               "userAcceleration.x", "userAcceleration.y", "userAcceleration.z")
SAMPLE_RATE = 50
DEFAULT_WINDOW, DEFAULT_STRIDE = 128, 64
_TRIAL_RE = re.compile(r"^([a-z]+)_(\d+)$")
_FILE_RE = re.compile(r"^sub_(\d+)(?:_w(\d+))?\.csv$")


def _parse_lines(path: Path, header: list[str], cols: list[int], lines: list[str]) -> np.ndarray:
    body = [ln for ln in lines[1:] if ln.strip()]
    data = np.empty((6, len(body)), dtype=np.float64)
    for r, ln in enumerate(body):
        cells = ln.split(",")
        if len(cells) != len(header):
            raise DataError(f"motion file {path} line {r + 2} has {len(cells)} cells but the header has "
                            f"{len(header)}; fix that line")
        try:
            data[:, r] = [float(cells[c]) for c in cols]
        except ValueError:
            raise DataError(f"motion file {path} line {r + 2} has a non-numeric or empty value; fix that line") from None
    return data


def parse_motion_csv(path: Path) -> np.ndarray:
    """The six used channels of one recording as a float32 ``(6, rows)`` array."""
    text = read_text(path)
    lines = text.splitlines()
    if not lines:
        raise DataError(f"motion file {path} is empty; it needs the DeviceMotion header and rows")
    header = [h.strip() for h in lines[0].split(",")]
    missing = [c for c in CHANNELS if c not in header]
    if missing:
        raise DataError(f"motion file {path} lacks column(s) {', '.join(missing)}; it must have the "
                        f"MotionSense DeviceMotion header")
    cols = [header.index(c) for c in CHANNELS]
    if not any(ln.strip() for ln in lines[1:]):
        return np.zeros((len(CHANNELS), 0), dtype=np.float32)
    try:
        # Fast C parser first; on failure the line-by-line parser below names the bad line.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = np.loadtxt(io.StringIO(text), delimiter=",", skiprows=1, usecols=cols, ndmin=2,
                              dtype=np.float64).T
        if data.shape[1] != sum(1 for ln in lines[1:] if ln.strip()):
            raise ValueError("row count mismatch")
        widths = {ln.count(",") for ln in lines[1:] if ln.strip()}
        if widths and widths != {len(header) - 1}:
            raise ValueError("ragged rows")
    except ValueError:
        data = _parse_lines(path, header, cols, lines)
    if not np.all(np.isfinite(data)):
        r = int(np.nonzero(~np.isfinite(data).all(axis=0))[0][0])
        raise DataError(f"motion file {path} line {r + 2} holds NaN or infinite values; fix or remove that line")
    return data.astype(np.float32)


class MotionReader:
    """Callable ``i -> (6, window)`` reading window ``i`` through an LRU cache of parsed files."""

    def __init__(self, files: list[str], file_of: np.ndarray, start_of: np.ndarray, window: int, cache_size: int = 8):
        self.files, self.file_of, self.start_of = files, file_of, start_of
        self.window, self.cache_size = int(window), int(cache_size)
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()

    def __getstate__(self):  # do not ship cached arrays to DataLoader workers
        d = dict(self.__dict__)
        d["_cache"] = OrderedDict()
        return d

    def _file(self, f: int) -> np.ndarray:
        if f in self._cache:
            self._cache.move_to_end(f)
            return self._cache[f]
        data = parse_motion_csv(Path(self.files[f]))
        self._cache[f] = data
        if len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)
        return data

    def __call__(self, i: int) -> np.ndarray:
        data = self._file(int(self.file_of[i]))
        s = int(self.start_of[i])
        win = data[:, s:s + self.window]
        if win.shape[1] != self.window:
            raise DataError(f"motion file {self.files[int(self.file_of[i])]} changed since it was loaded "
                            f"(window {i} is cut short); reload the dataset")
        return np.array(win, copy=True)  # callers may modify x; the cached file must not change


def _detect_motionsense(path: Path) -> bool:
    return path.is_dir() and (path / MOTION_DIR).is_dir()


def _subject_code(value: str, path: Path) -> str:
    try:
        f = float(value)
    except ValueError:
        raise DataError(f"{path} has the subject code {value!r}, which is not a number; fix it") from None
    if not f.is_integer():
        raise DataError(f"{path} has the subject code {value!r}, which is not an integer; fix it")
    return str(int(f))


@register_layout("motionsense", detect=_detect_motionsense, modality="motion", options=("window", "stride"),
                 priority=40, description="MotionSense: A_DeviceMotion_data/{act}_{trial}/sub_{k}.csv + "
                                          "data_subjects_info.csv")
def load_motionsense(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load MotionSense windows.

    Attributes: ``activity`` (dws, ups, wlk, jog, sit, std), ``subject`` (identity, ``sub_1`` ...),
    ``gender`` (female/male from code 0/1), ``height``, ``weight``, ``age``, the last three binned at
    the subjects' tertiles unless ``bins=`` gives edges.
    """
    require_dir(root, "MotionSense")
    motion_dir = root / MOTION_DIR
    if not motion_dir.is_dir():
        raise DataError(f"{root} has no {MOTION_DIR}/ folder; a MotionSense folder holds {MOTION_DIR}/ and "
                        f"{SUBJECTS_FILE}")
    info_path = require_file(root / SUBJECTS_FILE, "subject table")
    sidecar = read_sidecar(root)
    window = int(opts.window or sidecar.get("window") or DEFAULT_WINDOW)
    stride = int(opts.stride or sidecar.get("stride") or DEFAULT_STRIDE)
    header, rows = read_csv(info_path, required=["code", "weight", "height", "age", "gender"])
    table = {}
    for r in rows:
        code = _subject_code(r[header.index("code")], info_path)
        if code in table:
            raise DataError(f"{info_path} lists subject code {code} twice; keep one row per subject")
        table[code] = r
    trials = sorted((d for d in motion_dir.iterdir() if d.is_dir() and not d.name.startswith(".")),
                    key=lambda d: natural_key(d.name))
    files, subjects = [], []
    for d in trials:
        m = _TRIAL_RE.match(d.name)
        if not m or m.group(1) not in ACTIVITIES:
            raise DataError(f"trial folder {d.name!r} is not ACTIVITY_TRIAL with activity one of "
                            f"{', '.join(ACTIVITIES)}; rename or remove it")
        for p in sorted((p for p in d.iterdir() if p.is_file() and p.suffix == ".csv"),
                        key=lambda p: natural_key(p.name)):
            fm = _FILE_RE.match(p.name)
            if not fm:
                raise DataError(f"motion file {d.name}/{p.name} is not named sub_K.csv; rename or remove it")
            code = str(int(fm.group(1)))
            if code not in table:
                raise DataError(f"subject {code} (file {d.name}/{p.name}) has no row in {info_path}; add one")
            files.append(p)
            subjects.append(code)
    if not files:
        raise DataError(f"{motion_dir} holds no sub_K.csv recordings; add ACTIVITY_TRIAL/sub_K.csv files")
    file_of, start_of, sample_ids = [], [], []
    for f, p in enumerate(files):
        n_rows = parse_motion_csv(p).shape[1]
        n_windows = 0 if n_rows < window else 1 + (n_rows - window) // stride
        rel = f"{p.parent.name}/{p.name}"
        for w in range(n_windows):
            file_of.append(f)
            start_of.append(w * stride)
            sample_ids.append(f"{rel}#{w}")
        report(opts.progress, f + 1, len(files))
    if not sample_ids:
        raise DataError(f"no recording in {motion_dir} has {window} rows; lower window (now {window})")
    file_of = np.asarray(file_of, dtype=np.int64)
    start_of = np.asarray(start_of, dtype=np.int64)
    subj = [subjects[f] for f in file_of]
    gcol = header.index("gender")
    columns = [
        Column("activity", [_TRIAL_RE.match(files[f].parent.name).group(1) for f in file_of], classes=ACTIVITIES),
        Column("subject", [f"sub_{s}" for s in subj], identity=True),
        Column("gender", [table[s][gcol] for s in subj], classes=("female", "male"),
               aliases={"0": "female", "1": "male", "0.0": "female", "1.0": "male"}),
    ]
    present = sorted(set(subjects), key=int)
    for name in ("height", "weight", "age"):
        j = header.index(name)
        edges = None
        if name not in opts.bins:
            per_subject = []
            for s in present:
                try:
                    per_subject.append(float(table[s][j]))
                except ValueError:
                    raise DataError(f"{info_path} has the non-numeric {name} {table[s][j]!r} for subject {s}; "
                                    f"fix it") from None
            if not np.all(np.isfinite(per_subject)):
                raise DataError(f"{info_path} has a NaN or infinite {name}; fix it")
            edges = quantile_edges(per_subject, 3)
        columns.append(Column(name, [table[s][j] for s in subj], default_edges=edges))
    attributes, labels, extra = build_attributes(columns, opts.bins, sample_ids, str(info_path))
    extra.update(window=window, stride=stride)
    schema = Schema("motion", attributes, (len(CHANNELS), window), sample_rate=SAMPLE_RATE, layout="motionsense",
                    extra=extra)
    abs_files = [str(p.absolute()) for p in files]
    meta = {"subjects_header": header, "subjects_rows": table, "files": [f"{p.parent.name}/{p.name}" for p in files],
            "file_of": file_of, "start_of": start_of, "window": window, "stride": stride, "sidecar": sidecar}
    paths = [abs_files[f] for f in file_of]
    return LayoutDataset(schema, labels, sample_ids, MotionReader(abs_files, file_of, start_of, window), str(root),
                         paths, meta)
