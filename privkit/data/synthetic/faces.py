"""``synthetic-faces``: procedural greyscale 64x64 faces in the ``image_csv`` layout.

Layout::

    images/p{pid:03d}/{j:02d}.png     64x64 8-bit greyscale
    attributes.csv                    path,identity,gender,age,glasses,expression

Each person has an identity (face shape, eye spacing, nose, mouth, skin and hair tone, a skin
texture), a gender and an age group that change the geometry and texture the way they do in
photographs (a wider face and squarer jaw, thicker eyebrows, short hair or stubble for men; a
narrower face, long hair and darker lips for women; grey hair, forehead wrinkles, nasolabial folds
and eye bags with age). Each image draws glasses (no/yes) and an expression (neutral/smile), which
vary within a person, and nuisances: pose (shift, in-plane rotation, scale), a lighting gradient,
background, contrast and pixel noise. Faces are rendered by evaluating soft-edged implicit shapes
on the pose-transformed pixel grid, so no resampling is needed and one image takes ~1 ms.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from privkit.data.synthetic import register_builtin

IMAGE_SIZE = 64
GENDERS = ("female", "male")
AGES = ("young", "middle", "old")
GLASSES = ("no", "yes")
EXPRESSIONS = ("neutral", "smile")
IMAGES_PER_PERSON = 20
MIN_PEOPLE = 6  # every gender x age combination appears at least once
MIN_IMAGES_PER_PERSON = 4  # every glasses x expression combination appears within a person
_PIXEL = 2.0 / IMAGE_SIZE  # one pixel in the canonical [-1, 1] face coordinates


@dataclass(frozen=True)
class _Person:
    gender: int
    age: int
    face_half_width: float
    face_half_height: float
    jaw_exponent: float  # superellipse exponent of the lower face: 2 round, >3 square
    eye_dx: float
    eye_y: float
    eye_size: float
    brow_thickness: float
    brow_arch: float
    nose_length: float
    nose_width: float
    mouth_width: float
    mouth_y: float
    lip_darkness: float
    skin: float
    hair_tone: float
    hair_length: float  # lowest y the hair reaches at the sides (long hair: shoulders)
    hairline: float
    stubble: float
    shoulder_half_width: float
    wrinkles: float
    texture: tuple  # (amplitudes, frequencies, phases) of a per-person skin pattern


def _make_person(seed: int, pid: int) -> _Person:
    # Attributes cycle so that every gender x age combination is (nearly) equally frequent.
    gender = pid % 2
    age = (pid // 2) % 3
    rng = np.random.default_rng([seed, 0xFACE, pid])
    male = gender == 1
    u = rng.uniform
    # Hair tone drifts from dark/blond to grey/white with age; ranges overlap between neighbours.
    hair_tone = [u(0.05, 0.45), u(0.25, 0.6), u(0.55, 0.9)][age]
    texture = (u(0.015, 0.04, size=3), u(2.0, 6.0, size=(3, 2)) * rng.choice([-1, 1], size=(3, 2)), u(0, 2 * np.pi, 3))
    return _Person(
        gender=gender,
        age=age,
        face_half_width=(u(0.58, 0.66) if male else u(0.46, 0.53)) + 0.02 * age,
        face_half_height=u(0.66, 0.74),
        jaw_exponent=u(3.2, 4.5) if male else u(1.9, 2.4),
        eye_dx=u(0.19, 0.27),
        eye_y=u(-0.1, -0.02),
        eye_size=(u(0.055, 0.075) if male else u(0.07, 0.09)) * (1.0 - 0.1 * age),
        brow_thickness=u(0.045, 0.065) if male else u(0.018, 0.03),
        brow_arch=u(0.0, 0.03) if male else u(0.05, 0.09),
        nose_length=u(0.18, 0.3),
        nose_width=u(0.06, 0.11),
        mouth_width=u(0.14, 0.22),
        mouth_y=u(0.36, 0.44),
        lip_darkness=u(0.1, 0.2) if male else u(0.25, 0.4),
        skin=u(0.5, 0.8),
        hair_tone=hair_tone,
        hair_length=u(-0.1, 0.1) if male else u(0.6, 0.95),
        hairline=(u(-0.5, -0.4) - (0.12 * age if male else 0.0)),
        stubble=u(0.05, 0.15) if male else 0.0,
        shoulder_half_width=u(0.9, 1.05) if male else u(0.75, 0.9),
        wrinkles=[0.0, u(0.05, 0.09), u(0.12, 0.18)][age],
        texture=texture,
    )


def _inside(signed_distance: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage (0..1) of a shape given its signed distance (negative inside)."""
    return np.clip(0.5 - signed_distance / _PIXEL, 0.0, 1.0)


def _ellipse(x, y, cx, cy, ax, ay):
    return (np.sqrt(((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2) - 1.0) * min(ax, ay)


def _paint(canvas: np.ndarray, coverage: np.ndarray, value) -> np.ndarray:
    return canvas * (1.0 - coverage) + coverage * value


def _render(person: _Person, glasses: bool, smile: bool, rng: np.random.Generator) -> np.ndarray:
    """Render one 64x64 image in [0, 1]."""
    p = person
    # Nuisance pose: the pixel grid is mapped back to canonical face coordinates.
    angle = rng.uniform(-0.14, 0.14)
    scale = rng.uniform(0.92, 1.08)
    shift = rng.uniform(-0.08, 0.08, size=2)
    grid = (np.arange(IMAGE_SIZE) + 0.5) / IMAGE_SIZE * 2.0 - 1.0
    gx, gy = np.meshgrid(grid, grid)
    gx, gy = (gx - shift[0]) / scale, (gy - shift[1]) / scale
    cos_a, sin_a = math.cos(angle), math.sin(angle)
    x = cos_a * gx + sin_a * gy
    y = -sin_a * gx + cos_a * gy

    canvas = np.full(x.shape, rng.uniform(0.05, 0.65))
    face_cy = 0.05
    a, b = p.face_half_width, p.face_half_height

    # Hair behind the head: the top of the skull, and for long hair the sides down to the shoulders.
    hair_head = _ellipse(x, y, 0.0, face_cy - 0.06, a + 0.1, b + 0.08)
    hair_sides = np.maximum(np.abs(x) - (a + 0.14), np.maximum(y - p.hair_length, -0.2 - y))
    # Short hair stops at ear level; long hair reaches the shoulders.
    hair_back = np.maximum(np.minimum(hair_head, hair_sides), y - p.hair_length)
    canvas = _paint(canvas, _inside(hair_back), p.hair_tone)

    # Neck and shoulders.
    neck = np.maximum(np.abs(x) - 0.2, 0.55 - y)
    shoulders = np.maximum(np.abs(x) - p.shoulder_half_width, 0.88 - y - 0.15 * x**2)
    canvas = _paint(canvas, _inside(np.minimum(neck, shoulders)), p.skin * 0.82)
    if p.hair_length > 0.3:  # long hair falls over the shoulders, in front of the neck sides
        front = np.maximum(np.abs(np.abs(x) - (a + 0.06)) - 0.1, np.maximum(y - p.hair_length, 0.1 - y))
        canvas = _paint(canvas, _inside(front), p.hair_tone)

    # Face: elliptic above the eyes, a superellipse below (square jaw for large exponents).
    dx = np.abs(x) / a
    dy = (y - face_cy) / b
    face_level = np.where(dy < 0, np.sqrt(dx**2 + dy**2), (dx**p.jaw_exponent + np.abs(dy) ** 2) ** 0.5)
    face = (face_level - 1.0) * min(a, b)
    amplitudes, frequencies, phases = p.texture
    pattern = sum(
        amplitudes[k] * np.sin(frequencies[k, 0] * x + frequencies[k, 1] * y + phases[k]) for k in range(3)
    )
    skin = p.skin + pattern
    if smile:  # raised cheeks catch more light
        for side in (-1, 1):
            skin = skin + 0.06 * np.exp(-(((x - side * (p.eye_dx + 0.05)) / 0.12) ** 2 + ((y - 0.2) / 0.08) ** 2))
    canvas = _paint(canvas, _inside(face), skin)
    face_mask = _inside(face + _PIXEL)

    if p.stubble > 0:  # beard shadow on the lower face
        lower = np.clip((y - (p.mouth_y - 0.1)) / 0.15, 0.0, 1.0) * face_mask
        canvas = canvas - p.stubble * lower

    # Fringe/top hair above the hairline (recedes with age for men).
    hairline = p.hairline + 0.08 * x**2
    top_hair = np.maximum(hair_head, y - hairline)
    canvas = _paint(canvas, _inside(top_hair), p.hair_tone)

    # Ageing: forehead wrinkles, nasolabial folds, eye bags.
    if p.wrinkles > 0:
        for k in range(3):
            line_y = p.hairline + 0.12 + 0.07 * k + 0.01 * np.sin(9 * x + k)
            wrinkle = _inside(np.maximum(np.abs(y - line_y) - 0.008, np.abs(x) - 0.6 * a))
            canvas = canvas - p.wrinkles * wrinkle * face_mask
        for side in (-1, 1):
            t = np.clip((y - (p.eye_y + p.nose_length * 0.8)) / 0.25, 0, 1)
            fold_x = side * (p.nose_width + 0.06 + 0.1 * t)
            fold = np.maximum(np.abs(x - fold_x) - 0.01, np.abs(y - (p.eye_y + p.nose_length * 0.8 + 0.12)) - 0.12)
            canvas = canvas - 0.8 * p.wrinkles * _inside(fold) * face_mask
            bag = _ellipse(x, y, side * p.eye_dx, p.eye_y + 0.07, p.eye_size * 1.4, 0.025)
            canvas = canvas - 0.6 * p.wrinkles * _inside(bag)

    # Eyes, eyebrows.
    for side in (-1, 1):
        cx = side * p.eye_dx
        white = _ellipse(x, y, cx, p.eye_y, p.eye_size * 1.5, p.eye_size * (0.6 if smile else 0.8))
        canvas = _paint(canvas, _inside(white), 0.9)
        pupil = _ellipse(x, y, cx, p.eye_y, p.eye_size * 0.6, p.eye_size * 0.6)
        canvas = _paint(canvas, _inside(np.maximum(pupil, white)), 0.08)
        brow_y = p.eye_y - 0.11 - p.brow_arch * (1.0 - ((x - cx) / 0.12) ** 2)
        brow = np.maximum(np.abs(y - brow_y) - p.brow_thickness / 2, np.abs(x - cx) - 0.12)
        canvas = _paint(canvas, _inside(brow), min(p.hair_tone, 0.35) * 0.8)

    # Nose: a shaded ridge and two nostrils.
    ridge = np.maximum(np.abs(x - 0.03) - 0.012, np.maximum(p.eye_y - y, y - (p.eye_y + p.nose_length)))
    canvas = canvas - 0.12 * _inside(ridge)
    for side in (-1, 1):
        nostril = _ellipse(x, y, side * p.nose_width / 2, p.eye_y + p.nose_length, 0.025, 0.015)
        canvas = _paint(canvas, _inside(nostril), p.skin * 0.35)

    # Mouth: a straight line (neutral) or an upturned open curve showing teeth (smile).
    if smile:  # wider, corners up, lips parted
        width = p.mouth_width * 1.35
        t = np.clip(x / width, -1.5, 1.5)
        curve_y = p.mouth_y + 0.1 * (1.0 - t**2) - 0.06
        upper = curve_y - 0.06 * (1.0 - t**2)
        opening = np.maximum(np.maximum(upper - y, y - curve_y), np.abs(x) - width)
        lips = np.maximum(np.maximum(upper - 0.018 - y, y - curve_y - 0.018), np.abs(x) - width - 0.015)
        canvas = _paint(canvas, _inside(lips), p.skin * (1 - p.lip_darkness) * 0.8)
        canvas = _paint(canvas, _inside(opening), 0.92)
    else:
        lips = np.maximum(np.abs(y - p.mouth_y) - 0.016, np.abs(x) - p.mouth_width)
        canvas = _paint(canvas, _inside(lips), p.skin * (1 - p.lip_darkness) * 0.8)

    if glasses:
        frame_value = rng.uniform(0.02, 0.15)
        radius = max(p.eye_size * 2.2, 0.13)
        for side in (-1, 1):
            cx = side * p.eye_dx
            lens = _ellipse(x, y, cx, p.eye_y, radius, radius * 0.8)
            canvas = canvas + 0.05 * _inside(lens)  # reflection on the glass
            canvas = _paint(canvas, _inside(np.abs(lens) - 0.014), frame_value)
            arm = np.maximum(np.abs(y - p.eye_y + 0.02) - 0.012, np.maximum(cx * side + radius - side * x, side * x - (a + 0.05)))
            canvas = _paint(canvas, _inside(arm), frame_value)
        bridge = np.maximum(np.abs(y - p.eye_y + 0.03) - 0.012, np.abs(x) - (p.eye_dx - radius + 0.01))
        canvas = _paint(canvas, _inside(bridge), frame_value)

    # Lighting gradient and camera gain, then sensor noise.
    direction = rng.uniform(0, 2 * np.pi)
    light = 1.0 + rng.uniform(0.0, 0.3) * (math.cos(direction) * gx + math.sin(direction) * gy)
    canvas = canvas * light * rng.uniform(0.85, 1.15) + rng.uniform(-0.05, 0.05)
    canvas = canvas + rng.normal(0.0, rng.uniform(0.01, 0.035), size=canvas.shape)
    return np.clip(canvas, 0.0, 1.0)


def _images_per_person(size: int) -> list[int]:
    n_people = max(MIN_PEOPLE, round(size / IMAGES_PER_PERSON))
    n_people = min(n_people, size // MIN_IMAGES_PER_PERSON)
    counts = [size // n_people] * n_people
    for k in range(size - sum(counts)):
        counts[k] += 1
    return counts


@register_builtin(
    "synthetic-faces",
    "procedural 64x64 greyscale faces: identity, gender, age (per person), glasses, expression (per image)",
    default_size=800,
    layout="image_csv",
    min_size=MIN_PEOPLE * MIN_IMAGES_PER_PERSON,
)
def write_faces(out_dir: Path, size: int, seed: int, progress=None) -> None:
    """Write ``size`` face images (about 20 per person) and ``attributes.csv`` into ``out_dir``."""
    out_dir = Path(out_dir)
    counts = _images_per_person(size)
    rows = []
    done = 0
    for pid, n_images in enumerate(counts):
        person = _make_person(seed, pid)
        person_dir = out_dir / "images" / f"p{pid:03d}"
        person_dir.mkdir(parents=True)
        rng = np.random.default_rng([seed, 0xFACE, pid, 1])
        # Glasses x expression balanced within the person, in a random order.
        combos = [(k % 2, (k // 2) % 2) for k in range(n_images)]
        combos = [combos[k] for k in rng.permutation(n_images)]
        for j, (glasses, smile) in enumerate(combos):
            image = _render(person, bool(glasses), bool(smile), rng)
            path = f"images/p{pid:03d}/{j:02d}.png"
            Image.fromarray(np.round(image * 255).astype(np.uint8), mode="L").save(out_dir / path, format="PNG")
            rows.append([path, f"p{pid:03d}", GENDERS[person.gender], AGES[person.age], GLASSES[glasses], EXPRESSIONS[smile]])
            done += 1
            if progress is not None:
                progress(done, size)
    with open(out_dir / "attributes.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["path", "identity", "gender", "age", "glasses", "expression"])
        writer.writerows(rows)
