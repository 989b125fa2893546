"""Built-in generated datasets: registry, atomic writing, determinism, layouts, learnability.

The files are read here directly (PIL, soundfile, csv, numpy) rather than through
``privkit.data.loaders``, so these tests pin the on-disk layouts independently of the loaders.
Learnability is checked with a quick held-out scikit-learn model per attribute: identity-like
attributes hold out samples within each person; per-person attributes (gender, age, accent) hold
out whole people (grouped cross-validation), so a model cannot pass by recognising individuals.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile
from PIL import Image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GroupKFold, cross_val_predict, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from privkit.data.synthetic import BUILTIN_DATASETS, generate, register_builtin
from privkit.errors import ConfigError, DataError, ResourceError

MOTION_HEADER = (
    ",attitude.roll,attitude.pitch,attitude.yaw,gravity.x,gravity.y,gravity.z,rotationRate.x,rotationRate.y,"
    "rotationRate.z,userAcceleration.x,userAcceleration.y,userAcceleration.z"
)


# -- helpers ---------------------------------------------------------------------------------------
def _read_csv(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames), list(reader)


def _tree_digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _model(c: float = 1.0):
    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))


def _within_group_accuracy(features, labels, seed=0, c=1.0) -> float:
    """Accuracy on held-out samples of the same people (stratified by label)."""
    x_train, x_test, y_train, y_test = train_test_split(features, labels, test_size=0.3, stratify=labels, random_state=seed)
    return float(np.mean(_model(c).fit(x_train, y_train).predict(x_test) == y_test))


def _across_group_accuracy(features, labels, groups, n_splits=4, c=1.0) -> float:
    """Accuracy on whole held-out people (grouped cross-validation)."""
    predicted = cross_val_predict(_model(c), features, labels, groups=groups, cv=GroupKFold(n_splits=n_splits))
    return float(np.mean(predicted == np.asarray(labels)))


def _best_single_feature_accuracy(features, labels, groups, n_splits=4) -> float:
    """Held-out accuracy of the best one-feature threshold rule (midpoint of the class means)."""
    labels = np.asarray(labels)
    classes = np.unique(labels)
    assert len(classes) == 2
    correct = np.zeros(features.shape[1])
    for train, test in GroupKFold(n_splits=n_splits).split(features, labels, groups):
        mean_a = features[train][labels[train] == classes[0]].mean(axis=0)
        mean_b = features[train][labels[train] == classes[1]].mean(axis=0)
        predict_b = (features[test] > (mean_a + mean_b) / 2) == (mean_b > mean_a)
        correct += (predict_b == (labels[test] == classes[1])[:, None]).sum(axis=0)
    return float(correct.max() / len(labels))


# -- registry and writing --------------------------------------------------------------------------
def test_registry_holds_the_four_builtins_with_their_layouts():
    layouts = {name: spec.layout for name, spec in BUILTIN_DATASETS.items()}
    assert layouts == {
        "synthetic-faces": "image_csv",
        "synthetic-speech": "fsdd",
        "synthetic-motion": "motionsense",
        "digits": "npz",
    }
    for spec in BUILTIN_DATASETS.values():
        assert spec.default_size >= spec.min_size >= 1


def test_unknown_name_lists_known_names(tmp_path):
    with pytest.raises(DataError, match="synthetic-faces.*synthetic-speech|digits.*synthetic-faces"):
        generate("synthetic-cats", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_too_small_size_is_a_config_error(tmp_path):
    spec = BUILTIN_DATASETS["synthetic-faces"]
    with pytest.raises(ConfigError, match=str(spec.min_size)):
        generate("synthetic-faces", tmp_path / "out", size=spec.min_size - 1)
    with pytest.raises(ConfigError):
        generate("synthetic-faces", tmp_path / "out", seed=-1)


def test_refuses_non_empty_output_and_accepts_empty(tmp_path):
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    with pytest.raises(ResourceError, match="not empty"):
        generate("digits", full, size=20)
    assert (full / "keep.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert generate("digits", empty, size=20) == empty
    assert (empty / "digits.npz").is_file()


def test_interrupted_generation_leaves_nothing(tmp_path):
    @register_builtin("test-failing", "writes one file then fails", default_size=2, layout="npz")
    def _failing(out_dir, size, seed, progress):
        (out_dir / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    try:
        with pytest.raises(KeyboardInterrupt):
            generate("test-failing", tmp_path / "out")
    finally:
        BUILTIN_DATASETS.pop("test-failing")
    assert list(tmp_path.iterdir()) == []  # neither the target nor a staging folder


@pytest.mark.parametrize("name", ["synthetic-faces", "synthetic-speech", "synthetic-motion", "digits"])
def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path, name):
    size = max(BUILTIN_DATASETS[name].min_size, 100 if name == "digits" else 0)
    calls = []
    first = generate(name, tmp_path / "a", size=size, seed=3, progress=lambda done, total: calls.append((done, total)))
    again = generate(name, tmp_path / "b", size=size, seed=3)
    other = generate(name, tmp_path / "c", size=size, seed=4)
    digest_first, digest_again, digest_other = _tree_digest(first), _tree_digest(again), _tree_digest(other)
    assert digest_first == digest_again
    assert digest_first.keys() == digest_other.keys()  # the layout does not depend on the seed
    changed = [k for k in digest_first if digest_first[k] != digest_other[k]]
    data_files = [k for k in digest_first if k.endswith((".png", ".wav", ".npz")) or "/sub_" in k]
    assert set(data_files) <= set(changed), "every sample must change with the seed"
    assert calls and calls[-1][0] == calls[-1][1] and [d for d, _ in calls] == list(range(1, len(calls) + 1))


# -- digits ----------------------------------------------------------------------------------------
def test_digits_npz_contents(tmp_path):
    full = np.load(generate("digits", tmp_path / "full") / "digits.npz", allow_pickle=False)
    assert full["x"].shape == (1797, 1, 8, 8) and full["x"].dtype == np.float32
    assert full["x"].min() == 0.0 and full["x"].max() == 1.0
    assert full["digit"].dtype == np.int64 and str(full["modality"]) == "image"
    small = np.load(generate("digits", tmp_path / "small", size=200, seed=1) / "digits.npz", allow_pickle=False)
    assert len(small["digit"]) == 200
    counts = np.bincount(small["digit"], minlength=10)
    assert counts.min() >= 17 and counts.max() <= 23  # stratified subset
    # The subset is made of real rows of the full set.
    full_rows = {row.tobytes() for row in full["x"].reshape(len(full["x"]), -1)}
    assert all(row.tobytes() in full_rows for row in small["x"].reshape(200, -1))


# -- faces -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    root = generate("synthetic-faces", tmp_path_factory.mktemp("faces") / "data", size=360, seed=0)
    header, rows = _read_csv(root / "attributes.csv")
    pixels = []
    for row in rows:
        with Image.open(root / row["path"]) as img:
            assert img.mode == "L" and img.size == (64, 64)
            pixels.append(np.asarray(img, dtype=np.float32) / 255.0)
    return header, rows, np.stack(pixels)


def test_faces_layout(faces):
    header, rows, pixels = faces
    assert header == ["path", "identity", "gender", "age", "glasses", "expression"]
    assert len(rows) == 360
    for row in rows:
        assert row["path"] == f"images/{row['identity']}/{Path(row['path']).name}"
    by_person = defaultdict(list)
    for row in rows:
        by_person[row["identity"]].append(row)
    assert len(by_person) == 18
    for person_rows in by_person.values():
        # Per-person attributes are constant; per-image ones vary within every person.
        assert len({r["gender"] for r in person_rows}) == 1 and len({r["age"] for r in person_rows}) == 1
        assert {r["glasses"] for r in person_rows} == {"no", "yes"}
        assert {r["expression"] for r in person_rows} == {"neutral", "smile"}
    people = {pid: r[0] for pid, r in by_person.items()}
    assert Counter(r["gender"] for r in people.values()) == {"female": 9, "male": 9}
    assert Counter(r["age"] for r in people.values()) == {"young": 6, "middle": 6, "old": 6}
    assert pixels.std(axis=0).min() > 0.01  # nuisances move every pixel


def test_faces_every_attribute_is_learnable(faces):
    _, rows, pixels = faces
    # 16x16 pixels standardised per image (against lighting and gain) and edge strength.
    small = pixels.reshape(-1, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(rows), -1)
    grad_y, grad_x = np.gradient(pixels, axis=(1, 2))
    edges = np.hypot(grad_x, grad_y).reshape(-1, 16, 4, 16, 4).mean(axis=(2, 4)).reshape(len(rows), -1)
    standardised = (small - small.mean(1, keepdims=True)) / small.std(1, keepdims=True)
    features = np.concatenate([standardised, edges], axis=1)
    column = {name: np.array([r[name] for r in rows]) for name in rows[0]}
    people = column["identity"]
    identity_acc = _within_group_accuracy(features, people, c=0.1)
    assert identity_acc > 0.6, identity_acc  # chance 1/18
    gender_acc = _across_group_accuracy(features, column["gender"], people, c=0.01)
    age_acc = _across_group_accuracy(features, column["age"], people, c=0.01)
    assert gender_acc > 0.8, gender_acc  # chance 0.5, held-out people
    assert age_acc > 0.55, age_acc  # chance 1/3, held-out people
    for name in ("glasses", "expression"):
        acc = _across_group_accuracy(features, column[name], people, c=0.1)
        assert acc > 0.8, (name, acc)
    # Not trivially learnable: no single pixel separates the genders of held-out people.
    single_pixel = _best_single_feature_accuracy(small, column["gender"], people)
    assert single_pixel < gender_acc - 0.1, (single_pixel, gender_acc)


# -- speech ----------------------------------------------------------------------------------------
def _speech_features(audio: np.ndarray, rate: int) -> np.ndarray:
    """Long-term spectrum, a 4-part spectral time course of the word and an F0 estimate."""
    frame, hop = 256, 128
    n_frames = 1 + (len(audio) - frame) // hop
    frames = np.stack([audio[k * hop : k * hop + frame] for k in range(n_frames)]) * np.hanning(frame)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2 + 1e-10
    energy = power.sum(axis=1)
    active = np.flatnonzero(energy > 0.05 * energy.max())
    word = np.log(power[active[0] : active[-1] + 1])
    long_term = word.mean(axis=0)[1:].reshape(32, 4).mean(axis=1)
    parts = np.array_split(word, 4)
    time_course = np.concatenate([p[:, 1:].reshape(len(p), 16, 8).mean(axis=(0, 2)) for p in parts])
    voiced = audio[active[0] * hop : active[-1] * hop + frame]
    # F0 of the whole word and of its first and last thirds (the pitch contour), and its length.
    log_f0 = [np.log(_f0(part, rate)) for part in (voiced, voiced[: len(voiced) // 3], voiced[-len(voiced) // 3 :])]
    contour = [log_f0[0], log_f0[2] - log_f0[1], np.log(len(voiced) / rate)]
    return np.concatenate([long_term, time_course, contour])


def _f0(audio: np.ndarray, rate: int) -> float:
    """Autocorrelation F0 estimate between 80 and 300 Hz."""
    spectrum = np.fft.rfft(audio, 2 * len(audio))
    ac = np.fft.irfft(np.abs(spectrum) ** 2)[: len(audio)]  # autocorrelation via FFT
    lags = np.arange(rate // 300, rate // 80)
    return rate / lags[np.argmax(ac[lags])]


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    root = generate("synthetic-speech", tmp_path_factory.mktemp("speech") / "data", size=480, seed=0)
    return root


def test_speech_layout(speech):
    header, speakers = _read_csv(speech / "speakers.csv")
    assert header == ["speaker", "gender", "accent"]
    assert len(speakers) == 12
    assert Counter(s["gender"] for s in speakers) == {"female": 6, "male": 6}
    assert len({s["accent"] for s in speakers}) == 3
    sidecar = json.loads((speech / "privkit_layout.json").read_text())
    assert sidecar["label_name"] == "word" and len(sidecar["label_classes"]) == len(set(sidecar["label_classes"])) == 10
    files = sorted((speech / "recordings").glob("*.wav"))
    assert len(files) == 480
    names = {s["speaker"] for s in speakers}
    for path in files[::37]:
        word, speaker, index = path.stem.split("_")
        assert 0 <= int(word) <= 9 and speaker in names and int(index) >= 0
        info = soundfile.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (8000, 1, "PCM_16")
        assert 0.6 <= info.duration <= 0.85


def test_speech_every_attribute_is_learnable(speech):
    _, speakers = _read_csv(speech / "speakers.csv")
    speaker_info = {s["speaker"]: s for s in speakers}
    features, words, names = [], [], []
    for path in sorted((speech / "recordings").glob("*.wav")):
        audio, rate = soundfile.read(path)
        word, speaker, _ = path.stem.split("_")
        features.append(_speech_features(audio, rate))
        words.append(word)
        names.append(speaker)
    features, names = np.array(features), np.array(names)
    gender = np.array([speaker_info[s]["gender"] for s in names])
    accent = np.array([speaker_info[s]["accent"] for s in names])
    word_acc = _across_group_accuracy(features, np.array(words), names, c=0.1)
    assert word_acc > 0.8, word_acc  # chance 0.1, held-out speakers
    speaker_acc = _within_group_accuracy(features, names, c=0.1)
    assert speaker_acc > 0.6, speaker_acc  # chance 1/12
    gender_acc = _across_group_accuracy(features, gender, names, c=0.1)
    assert gender_acc > 0.85, gender_acc  # chance 0.5, held-out speakers
    # Accents move the formants of some vowels only: compare each word with the speaker's own
    # average (label-free per-speaker normalisation) in a per-word slot of the feature vector.
    normalised = features.copy()
    for speaker in np.unique(names):
        normalised[names == speaker] -= features[names == speaker].mean(axis=0)
    words = np.array(words)
    per_word = np.zeros((len(features), 10 * features.shape[1]))
    for k in range(10):
        per_word[words == str(k), k * features.shape[1] : (k + 1) * features.shape[1]] = normalised[words == str(k)]
    accent_acc = _across_group_accuracy(per_word, accent, names, c=0.1)
    assert accent_acc > 0.55, accent_acc  # chance 1/3, held-out speakers


# -- motion ----------------------------------------------------------------------------------------
def _motion_windows(root: Path, window=128, stride=64):
    features, activity, subject = [], [], []
    for path in sorted((root / "A_DeviceMotion_data").glob("*/sub_*.csv")):
        with open(path, encoding="utf-8") as f:
            assert f.readline().rstrip("\n") == MOTION_HEADER
        table = np.loadtxt(path, delimiter=",", skiprows=1)
        assert np.array_equal(table[:, 0], np.arange(len(table)))
        signals = table[:, 1:]
        for start in range(0, len(signals) - window + 1, stride):
            w = signals[start : start + window]
            acc_norm = np.linalg.norm(w[:, 9:12], axis=1)
            spectrum = np.abs(np.fft.rfft(acc_norm - acc_norm.mean()))[1:33]
            features.append(np.concatenate([w.mean(0), w.std(0), np.log(spectrum.reshape(8, 4).sum(1) + 1e-6)]))
            activity.append(path.parent.name.split("_")[0])
            subject.append(int(path.stem.split("_")[1]))
    return np.array(features), np.array(activity), np.array(subject)


@pytest.fixture(scope="module")
def motion(tmp_path_factory):
    root = generate("synthetic-motion", tmp_path_factory.mktemp("motion") / "data", size=960, seed=0)
    return root, *_motion_windows(root)


def test_motion_layout(motion):
    root, _, activity, subject = motion
    assert sorted(p.name for p in (root / "A_DeviceMotion_data").iterdir()) == [
        "dws_1", "jog_9", "sit_5", "std_6", "ups_3", "wlk_7"
    ]  # fmt: skip
    header, info = _read_csv(root / "data_subjects_info.csv")
    assert header == ["code", "weight", "height", "age", "gender"]
    assert [int(r["code"]) for r in info] == list(range(1, 11))
    assert Counter(r["gender"] for r in info) == {"0": 5, "1": 5}
    for r in info:
        assert 40 <= int(r["weight"]) <= 120 and 145 <= int(r["height"]) <= 200 and 18 <= int(r["age"]) <= 60
    assert 0.8 * 960 <= len(activity) <= 1.2 * 960  # size counts 128-sample windows at stride 64
    assert set(Counter(activity).values()) and min(Counter(subject).values()) >= 6 * 8


def test_motion_every_attribute_is_learnable(motion):
    root, features, activity, subject = motion
    _, info = _read_csv(root / "data_subjects_info.csv")
    gender = np.array([{int(r["code"]): r["gender"] for r in info}[s] for s in subject])
    activity_acc = _across_group_accuracy(features, activity, subject, n_splits=5)
    assert activity_acc > 0.9, activity_acc  # chance 1/6, held-out subjects
    subject_acc = _within_group_accuracy(features, subject)
    assert subject_acc > 0.5, subject_acc  # chance 1/10
    moving = np.isin(activity, ["dws", "ups", "wlk", "jog"])
    gender_acc = _across_group_accuracy(features[moving], gender[moving], subject[moving], n_splits=5, c=0.1)
    assert gender_acc > 0.75, gender_acc  # chance 0.5, held-out subjects
    # Taller subjects walk at a lower step frequency (pendulum legs): peak of the whole walk's spectrum.
    heights, cadences = [], []
    for r in info:
        table = np.loadtxt(root / "A_DeviceMotion_data" / "wlk_7" / f"sub_{r['code']}.csv", delimiter=",", skiprows=1)
        acc_norm = np.linalg.norm(table[:, 10:13], axis=1)
        spectrum = np.abs(np.fft.rfft(acc_norm - acc_norm.mean()))
        freqs = np.fft.rfftfreq(len(acc_norm), d=1 / 50)
        band = (freqs > 1.2) & (freqs < 2.6)
        cadences.append(freqs[band][np.argmax(spectrum[band])])
        heights.append(int(r["height"]))
    assert np.corrcoef(heights, cadences)[0, 1] < -0.3, (heights, cadences)
