"""Audio layouts: ``fsdd`` (Free Spoken Digit Dataset) and ``audiomnist``.

WAVs are read with :mod:`soundfile`, averaged to mono, resampled to a common ``sample_rate``
(polyphase, :func:`scipy.signal.resample_poly`) and centre padded / trimmed to ``duration`` seconds,
so every sample is a float32 ``(1, T)`` array with ``T = round(sample_rate * duration)``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Sequence

import numpy as np

from privkit.data.loaders import (
    SIDECAR, Column, LayoutDataset, LoadOptions, build_attributes, natural_key, read_csv, read_sidecar, read_text,
    register_layout, report, require_dir, require_file,
)
from privkit.data.schema import Schema
from privkit.errors import DataError

DEFAULT_SAMPLE_RATE = 8000
DEFAULT_DURATION = 1.0
DIGITS = tuple(str(d) for d in range(10))
AUDIOMNIST_META = "audioMNIST_meta.txt"
AUDIOMNIST_AGE_EDGES = [25.0, 35.0]
#: AudioMNIST metadata fields used as attributes, with the attribute name users type.
AUDIOMNIST_FIELDS = {"gender": "gender", "accent": "accent", "age": "age", "native speaker": "native_speaker"}


def probe_audio(path: Path) -> None:
    """Open the WAV header (cheap); an unreadable or empty file is a DataError naming it."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as e:  # libsndfile reports bad files with several exception types
        raise DataError(f"audio file {path} is corrupt or not a WAV ({type(e).__name__}: {e}); "
                        f"replace or remove it") from e
    if info.frames <= 0 or info.samplerate <= 0 or info.channels <= 0:
        raise DataError(f"audio file {path} holds no samples; replace or remove it")


def fit_length(x: np.ndarray, length: int) -> np.ndarray:
    """Centre-trim or symmetrically zero-pad a 1-D signal to ``length`` samples."""
    n = len(x)
    if n >= length:
        start = (n - length) // 2
        return x[start:start + length]
    left = (length - n) // 2
    return np.pad(x, (left, length - n - left))


def read_audio(path: Path, sample_rate: int, length: int) -> np.ndarray:
    """``(1, length)`` float32 mono waveform of ``path`` at ``sample_rate``."""
    import soundfile as sf
    from scipy.signal import resample_poly

    try:
        data, file_rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as e:  # libsndfile reports bad files with several exception types
        raise DataError(f"cannot decode audio file {path} ({type(e).__name__}: {e}); the file is corrupt or "
                        f"truncated, replace or remove it") from e
    if data.size == 0:
        raise DataError(f"audio file {path} holds no samples; replace or remove it")
    x = data.mean(axis=1)
    if not np.all(np.isfinite(x)):
        raise DataError(f"audio file {path} contains NaN or infinite samples; replace or remove it")
    if file_rate != sample_rate:
        g = math.gcd(int(file_rate), int(sample_rate))
        x = resample_poly(x, int(sample_rate) // g, int(file_rate) // g).astype(np.float32)
    return fit_length(x, length).astype(np.float32)[None]


class AudioReader:
    """Callable ``i -> (1, T)`` waveform of ``paths[i]``; picklable for DataLoader workers."""

    def __init__(self, paths: Sequence[str], sample_rate: int, length: int):
        self.paths, self.sample_rate, self.length = list(paths), int(sample_rate), int(length)

    def __call__(self, i: int) -> np.ndarray:
        return read_audio(Path(self.paths[i]), self.sample_rate, self.length)


def _rate_and_length(opts: LoadOptions, sidecar: dict) -> tuple[int, int, float]:
    rate = opts.sample_rate or sidecar.get("sample_rate") or DEFAULT_SAMPLE_RATE
    duration = opts.duration or sidecar.get("duration") or DEFAULT_DURATION
    try:
        rate, duration = int(rate), float(duration)
    except (TypeError, ValueError):
        raise DataError(f"{SIDECAR} gives a sample_rate/duration that is not a number; fix it") from None
    length = int(round(rate * duration))
    if rate < 1 or length < 1:
        raise DataError(f"sample_rate {rate} x duration {duration} gives no samples; use larger values")
    return rate, length, duration


def _audio_dataset(layout: str, root: Path, rel_ids: Sequence[str], paths: Sequence[Path], columns, opts: LoadOptions,
                   source: str, sidecar: dict, meta: dict) -> LayoutDataset:
    attributes, labels, extra = build_attributes(columns, opts.bins, rel_ids, source)
    rate, length, duration = _rate_and_length(opts, sidecar)
    for k, p in enumerate(paths):
        probe_audio(p)
        report(opts.progress, k + 1, len(paths))
    extra["duration"] = duration
    schema = Schema("audio", attributes, (1, length), sample_rate=rate, layout=layout, extra=extra)
    abs_paths = [str(Path(p).absolute()) for p in paths]
    return LayoutDataset(schema, labels, list(rel_ids), AudioReader(abs_paths, rate, length), str(root),
                         abs_paths, meta)


def _wavs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() == ".wav"
                   and not p.name.startswith(".")), key=lambda p: natural_key(p.name))


# -- fsdd ----------------------------------------------------------------------------------------

def _detect_fsdd(path: Path) -> bool:
    return path.is_dir() and (path / "recordings").is_dir() and (path / "speakers.csv").is_file()


@register_layout("fsdd", detect=_detect_fsdd, modality="audio", options=("sample_rate", "duration"), priority=30,
                 description="recordings/{label}_{speaker}_{index}.wav + speakers.csv")
def load_fsdd(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load an FSDD-style folder.

    Attributes: the spoken label (``digit`` with classes ``0``..``9``, or the sidecar's
    ``label_name`` / ``label_classes``), ``speaker`` (identity), then every ``speakers.csv`` column
    that has more than one value (single-valued ones are listed in
    ``schema.extra["dropped_attributes"]``).
    """
    require_dir(root, "FSDD")
    rec = root / "recordings"
    if not rec.is_dir():
        raise DataError(f"{root} has no recordings/ folder; an FSDD folder holds recordings/*.wav and speakers.csv")
    csv_path = require_file(root / "speakers.csv", "speaker table")
    sidecar = read_sidecar(root)
    label_name = str(sidecar.get("label_name", "digit"))
    label_classes = tuple(str(c) for c in sidecar.get("label_classes", DIGITS))
    if not label_classes:
        raise DataError(f"{root / SIDECAR} gives an empty label_classes list; list the class names")
    files = _wavs(rec)
    if not files:
        raise DataError(f"{rec} holds no .wav files; add recordings named LABEL_SPEAKER_INDEX.wav")
    label_values, speakers = [], []
    for p in files:
        label, sep, rest = p.stem.partition("_")
        speaker, sep2, index = rest.rpartition("_")
        if not sep or not sep2 or not label or not speaker or not index:
            raise DataError(f"recording name {p.name!r} is not LABEL_SPEAKER_INDEX.wav; rename or remove it")
        if label in label_classes:
            value = label
        elif label.isdigit() and int(label) < len(label_classes):
            value = label_classes[int(label)]  # the synthetic layout stores class indices in file names
        else:
            raise DataError(f"recording {p.name!r} has the label {label!r}, which is not one of "
                            f"{', '.join(label_classes[:12])}; rename it or list the class in {SIDECAR}")
        label_values.append(value)
        speakers.append(speaker)
    header, rows = read_csv(csv_path, required=["speaker"])
    scol = header.index("speaker")
    table: dict[str, list[str]] = {}
    for r in rows:
        if r[scol] in table:
            raise DataError(f"{csv_path} lists speaker {r[scol]!r} twice; keep one row per speaker")
        table[r[scol]] = r
    for s, p in zip(speakers, files):
        if s not in table:
            raise DataError(f"speaker {s!r} (file {p.name}) has no row in {csv_path}; add one")
    rel_ids = [f"recordings/{p.name}" for p in files]
    columns = [Column(label_name, label_values, classes=label_classes),
               Column("speaker", speakers, identity=True)]
    for j, name in enumerate(header):
        if j != scol:
            columns.append(Column(name, [table[s][j] for s in speakers], droppable=True))
    meta = {"speakers_header": header, "speakers_rows": table, "speakers": speakers, "sidecar": sidecar,
            "relpaths": rel_ids}
    return _audio_dataset("fsdd", root, rel_ids, files, columns, opts, str(csv_path), sidecar, meta)


# -- audiomnist ----------------------------------------------------------------------------------

def _detect_audiomnist(path: Path) -> bool:
    return path.is_dir() and (path / AUDIOMNIST_META).is_file()


@register_layout("audiomnist", detect=_detect_audiomnist, modality="audio", options=("sample_rate", "duration"),
                 priority=31, description="AudioMNIST: NN/{digit}_{NN}_{rep}.wav + audioMNIST_meta.txt")
def load_audiomnist(root: Path, opts: LoadOptions) -> LayoutDataset:
    """Load AudioMNIST: ``digit``, ``speaker`` (identity), ``gender``, ``accent``, ``age`` (binned,
    default ``<25, 25-35, >=35``), ``native_speaker``; 48 kHz audio resampled to ``sample_rate``."""
    require_dir(root, "AudioMNIST")
    meta_path = root / AUDIOMNIST_META
    try:
        table = json.loads(read_text(meta_path))
    except json.JSONDecodeError as e:
        raise DataError(f"{meta_path} is not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None
    if not isinstance(table, dict) or not all(isinstance(v, dict) for v in table.values()):
        raise DataError(f"{meta_path} must be a JSON object mapping speaker ids to objects of fields")
    sidecar = read_sidecar(root)
    folders = sorted((d for d in root.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: natural_key(d.name))
    files = [p for d in folders for p in _wavs(d)]
    if not files:
        raise DataError(f"{root} holds no NN/*.wav recordings; an AudioMNIST folder holds 01/0_01_0.wav ...")
    digits, speakers = [], []
    for p in files:
        parts = p.stem.split("_")
        if len(parts) != 3 or parts[0] not in DIGITS or not parts[1] or not parts[2]:
            raise DataError(f"recording name {p.name!r} is not DIGIT_SPEAKER_REP.wav; rename or remove it")
        if parts[1] not in table:
            raise DataError(f"speaker {parts[1]!r} (file {p.parent.name}/{p.name}) is not in {meta_path}; add it")
        digits.append(parts[0])
        speakers.append(parts[1])
    fields = {}
    for key, name in AUDIOMNIST_FIELDS.items():
        values = []
        for s in speakers:
            if key not in table[s]:
                raise DataError(f"speaker {s!r} in {meta_path} has no field {key!r}; add it")
            values.append(str(table[s][key]))
        fields[name] = values
    rel_ids = [f"{p.parent.name}/{p.name}" for p in files]
    columns = [Column("digit", digits, classes=DIGITS), Column("speaker", speakers, identity=True),
               Column("gender", fields["gender"], droppable=True), Column("accent", fields["accent"], droppable=True),
               Column("age", fields["age"], default_edges=AUDIOMNIST_AGE_EDGES),
               Column("native_speaker", fields["native_speaker"], droppable=True)]
    meta = {"table": table, "speakers": speakers, "sidecar": sidecar, "relpaths": rel_ids}
    return _audio_dataset("audiomnist", root, rel_ids, files, columns, opts, str(meta_path), sidecar, meta)
