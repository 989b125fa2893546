"""``synthetic-motion``: phone inertial signals in the MotionSense layout.

Layout (that of MotionSense, Malekzadeh et al. 2019, device-motion part)::

    A_DeviceMotion_data/{activity}_{trial}/sub_{k}.csv    50 Hz, 12 channels
    data_subjects_info.csv                                code,weight,height,age,gender

Each CSV has MotionSense's header ``,attitude.roll,attitude.pitch,attitude.yaw,gravity.x,gravity.y,
gravity.z,rotationRate.x,rotationRate.y,rotationRate.z,userAcceleration.x,userAcceleration.y,
userAcceleration.z`` with an unnamed integer row index first; gender is 0 (female) or 1 (male).

The phone sits in a trouser pocket. Its attitude :math:`(\\phi, \\theta, \\psi)` (roll, pitch, yaw)
follows the thigh: a posture-dependent pitch (thigh vertical when standing, horizontal when
sitting) plus a swing at the stride frequency :math:`f/2` while moving. The body acceleration in
the world frame is a sum of step harmonics

.. math:: a_w(t) = A \\sum_h w_h \\cos(h \\, \\varphi(t) + \\varphi_h), \\qquad
          \\varphi(t) = 2 \\pi \\int_0^t f(\\tau) \\, d\\tau,

with an activity-specific step frequency :math:`f` (walk ~1.8 Hz, jog ~2.6 Hz, stairs up slower
and asymmetric, stairs down faster with sharper impacts) and harmonic profile :math:`w_h`. The
device reports :math:`R^\\top a_w` and :math:`R^\\top (0, 0, -1)` (gravity), with :math:`R` the
attitude rotation, and the rotation rate :math:`\\dot\\phi, \\dot\\theta, \\dot\\psi` plus sensor noise.
Subject traits modulate the signals: height lowers the step frequency (:math:`f \\propto
h^{-1/2}`, pendulum legs), weight raises impact amplitude, gender changes the gait style (hip sway
and pelvic rotation at the stride frequency, harmonic balance), and every subject has a personal
harmonic signature, pocket orientation and cadence.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from privkit.data.synthetic import register_builtin

SAMPLE_RATE = 50
WINDOW = 128
STRIDE = 64
# Activity codes and trial numbers as in MotionSense.
ACTIVITY_TRIALS = {"dws": 1, "ups": 3, "wlk": 7, "jog": 9, "sit": 5, "std": 6}
CHANNELS = (
    "attitude.roll", "attitude.pitch", "attitude.yaw",
    "gravity.x", "gravity.y", "gravity.z",
    "rotationRate.x", "rotationRate.y", "rotationRate.z",
    "userAcceleration.x", "userAcceleration.y", "userAcceleration.z",
)  # fmt: skip
MIN_SUBJECTS = 8
MAX_SUBJECTS = 24


@dataclass(frozen=True)
class _Activity:
    step_hz: float  # 0 for static postures
    amplitude: float  # vertical body acceleration (g)
    forward: float
    lateral: float
    harmonics: tuple  # relative weights of step harmonics 1..4
    stride_weight: float  # weight of the stride (f/2) component: one leg differs from the other
    pitch: float  # thigh posture (rad): ~pi/2 standing, ~0 sitting
    swing: float  # thigh swing amplitude (rad)


_ACTIVITIES = {
    "dws": _Activity(1.95, 0.45, 0.25, 0.12, (1.0, 0.7, 0.5, 0.35), 0.35, 1.35, 0.32),
    "ups": _Activity(1.5, 0.3, 0.2, 0.1, (1.0, 0.25, 0.1, 0.05), 0.6, 1.15, 0.5),
    "wlk": _Activity(1.8, 0.35, 0.22, 0.1, (1.0, 0.45, 0.2, 0.1), 0.15, 1.4, 0.38),
    "jog": _Activity(2.6, 1.0, 0.45, 0.25, (1.0, 0.6, 0.3, 0.15), 0.1, 1.3, 0.7),
    "sit": _Activity(0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0, 0.0), 0.0, 0.08, 0.0),
    "std": _Activity(0.0, 0.0, 0.0, 0.0, (0.0, 0.0, 0.0, 0.0), 0.0, 1.48, 0.0),
}


@dataclass(frozen=True)
class _Subject:
    code: int
    gender: int  # 0 female, 1 male (MotionSense coding)
    height: int  # cm
    weight: int  # kg
    age: int  # years
    cadence: float  # personal step-frequency factor
    impact: float
    sway: float  # hip sway / pelvic rotation (larger in female gait)
    signature: np.ndarray  # personal harmonic weights (4,)
    signature_phase: np.ndarray  # personal harmonic phases (4,)
    roll0: float  # how the phone sits in the pocket
    pitch0: float
    tremor: float


def _make_subject(seed: int, code: int) -> _Subject:
    rng = np.random.default_rng([seed, 0x307, code])
    gender = code % 2  # alternate so that genders are balanced
    male = gender == 1
    height = int(np.clip(rng.normal(178 if male else 164, 6), 160 if male else 150, 195 if male else 180))
    bmi = rng.uniform(19, 30)
    weight = int(round(bmi * (height / 100) ** 2))
    age = int(rng.integers(18, 47))
    # Pendulum legs: f ~ sqrt(g / l) with leg length proportional to height; gait slows with age.
    cadence = np.sqrt(170.0 / height) * (1.0 - 0.003 * (age - 30)) * rng.uniform(0.95, 1.05)
    return _Subject(
        code=code,
        gender=gender,
        height=height,
        weight=weight,
        age=age,
        cadence=float(cadence),
        impact=float(np.sqrt(weight / 70.0) * rng.uniform(0.9, 1.1)),
        sway=float(rng.uniform(1.4, 2.0) if not male else rng.uniform(0.6, 1.0)),
        signature=rng.uniform(0.6, 1.4, size=4) * (np.array([1.0, 0.8, 1.3, 1.3]) if male else 1.0),
        signature_phase=rng.uniform(-0.6, 0.6, size=4),
        roll0=float(rng.normal(0.0, 0.25)),
        pitch0=float(rng.normal(0.0, 0.08)),
        tremor=float(rng.uniform(0.003, 0.012)),
    )


def _rotation(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """Device-to-world rotation matrices ``R = R_z(yaw) R_x(pitch) R_y(roll)``, shape (T, 3, 3)."""
    cr, sr = np.cos(roll), np.sin(roll)
    cp, sp = np.cos(pitch), np.sin(pitch)
    cy, sy = np.cos(yaw), np.sin(yaw)
    zeros, ones = np.zeros_like(roll), np.ones_like(roll)
    r_y = np.stack([np.stack([cr, zeros, sr], -1), np.stack([zeros, ones, zeros], -1), np.stack([-sr, zeros, cr], -1)], -2)
    r_x = np.stack([np.stack([ones, zeros, zeros], -1), np.stack([zeros, cp, -sp], -1), np.stack([zeros, sp, cp], -1)], -2)
    r_z = np.stack([np.stack([cy, -sy, zeros], -1), np.stack([sy, cy, zeros], -1), np.stack([zeros, zeros, ones], -1)], -2)
    return r_z @ r_x @ r_y


def _smooth_noise(rng: np.random.Generator, n: int, scale: float, smoothness: int) -> np.ndarray:
    """Low-frequency noise: white noise smoothed by a moving average of ``smoothness`` samples."""
    white = rng.standard_normal(n + smoothness)
    kernel = np.ones(smoothness) / np.sqrt(smoothness)
    return scale * np.convolve(white, kernel, mode="valid")[:n]


def _record(subject: _Subject, activity: _Activity, n: int, rng: np.random.Generator) -> np.ndarray:
    """One recording of ``n`` samples, shape (n, 12) in CHANNELS order."""
    t = np.arange(n) / SAMPLE_RATE
    moving = activity.step_hz > 0
    if moving:
        step_hz = activity.step_hz * subject.cadence * rng.uniform(0.97, 1.03)
        step_hz = step_hz * (1.0 + _smooth_noise(rng, n, 0.01, 50))  # cadence drifts slowly
        phase = 2 * np.pi * np.cumsum(step_hz) / SAMPLE_RATE + rng.uniform(0, 2 * np.pi)
        stride = phase / 2.0
        weights = np.array(activity.harmonics) * subject.signature
        phases = subject.signature_phase
        amplitude = activity.amplitude * subject.impact * rng.uniform(0.92, 1.08)
        vertical = amplitude * sum(weights[h] * np.cos((h + 1) * phase + phases[h]) for h in range(4))
        vertical += amplitude * activity.stride_weight * np.cos(stride + phases[0])
        forward = activity.forward * subject.impact * sum(
            weights[h] * np.sin((h + 1) * phase + 0.5 * phases[h]) for h in range(2)
        )
        lateral = activity.lateral * subject.sway * np.cos(stride + phases[1])
        swing = activity.swing * np.sin(stride + phases[2])
        roll_motion = 0.08 * subject.sway * np.sin(stride + phases[3])
        yaw_motion = activity.lateral * subject.sway * np.sin(stride)  # pelvic rotation
    else:
        vertical = forward = lateral = swing = roll_motion = yaw_motion = np.zeros(n)
    # Postural sway (standing) or fidgeting (sitting), and slow changes of heading.
    posture_noise = _smooth_noise(rng, n, 0.004, 25)
    roll = subject.roll0 + roll_motion + posture_noise
    pitch = activity.pitch + subject.pitch0 + swing + _smooth_noise(rng, n, 0.004, 25)
    yaw = rng.uniform(-np.pi, np.pi) + yaw_motion + _smooth_noise(rng, n, 0.02 if moving else 0.003, 100)
    yaw = (yaw + np.pi) % (2 * np.pi) - np.pi

    rotation = _rotation(roll, pitch, yaw)
    world_acc = np.stack([lateral, forward, vertical], axis=-1)
    user_acc = np.einsum("tji,tj->ti", rotation, world_acc)  # R^T a_world
    gravity = np.einsum("tji,j->ti", rotation, np.array([0.0, 0.0, -1.0]))
    rotation_rate = np.gradient(np.stack([roll, pitch, yaw], axis=-1), axis=0) * SAMPLE_RATE
    rotation_rate = np.where(np.abs(rotation_rate) > 20, 0.0, rotation_rate)  # yaw wrap-around
    rotation_rate += rng.normal(0, 0.01 + subject.tremor, size=rotation_rate.shape)
    user_acc += rng.normal(0, subject.tremor, size=user_acc.shape)
    attitude = np.stack([roll, pitch, yaw], axis=-1)
    return np.concatenate([attitude, gravity, rotation_rate, user_acc], axis=1)


def _layout(size: int) -> tuple[int, float]:
    n_subjects = int(np.clip(round(size / 100), MIN_SUBJECTS, MAX_SUBJECTS))
    windows_per_file = max(2.0, size / (n_subjects * len(ACTIVITY_TRIALS)))
    return n_subjects, windows_per_file


@register_builtin(
    "synthetic-motion",
    "phone-in-pocket motion (6 activities) in the MotionSense layout: activity, subject, gender, height, weight, age",
    default_size=2400,
    layout="motionsense",
    min_size=MIN_SUBJECTS * len(ACTIVITY_TRIALS) * 2,
)
def write_motion(out_dir: Path, size: int, seed: int, progress=None) -> None:
    """Write recordings holding about ``size`` windows (128 samples, stride 64) in total."""
    out_dir = Path(out_dir)
    n_subjects, windows_per_file = _layout(size)
    subjects = [_make_subject(seed, code) for code in range(1, n_subjects + 1)]
    total = n_subjects * len(ACTIVITY_TRIALS)
    done = 0
    header = "," + ",".join(CHANNELS)
    for activity_index, (activity_name, trial) in enumerate(ACTIVITY_TRIALS.items()):
        folder = out_dir / "A_DeviceMotion_data" / f"{activity_name}_{trial}"
        folder.mkdir(parents=True)
        for subject in subjects:
            rng = np.random.default_rng([seed, 0x307, subject.code, activity_index])
            # Vary recording lengths like real trials while keeping the expected window count.
            n_windows = max(2, int(round(windows_per_file * rng.uniform(0.8, 1.2))))
            n = WINDOW + STRIDE * (n_windows - 1) + int(rng.integers(0, STRIDE))
            data = _record(subject, _ACTIVITIES[activity_name], n, rng)
            table = np.column_stack([np.arange(n), data])
            # One formatting operation per file: np.savetxt formats row by row and is ~5x slower.
            row_format = "%d" + ",%.6f" * len(CHANNELS) + "\n"
            text = (row_format * n) % tuple(table.ravel().tolist())
            (folder / f"sub_{subject.code}.csv").write_text(header + "\n" + text, encoding="utf-8")
            done += 1
            if progress is not None:
                progress(done, total)
    with open(out_dir / "data_subjects_info.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["code", "weight", "height", "age", "gender"])
        for s in subjects:
            writer.writerow([s.code, s.weight, s.height, s.age, s.gender])
