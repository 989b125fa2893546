"""``synthetic-speech``: source-filter synthesised spoken words in the FSDD layout.

Layout (that of the Free Spoken Digit Dataset, plus a sidecar naming the words)::

    recordings/{word}_{speaker}_{index}.wav    mono, 8 kHz, 16-bit PCM, 0.6-0.8 s
    speakers.csv                               speaker,gender,accent
    privkit_layout.json                        {"label_name": "word", "label_classes": [...]}

Synthesis follows the classic source-filter model of speech (Fant, 1960; Klatt, 1980). The voiced
source is a glottal pulse train at the speaker's fundamental frequency :math:`F_0` (about 100-140 Hz
for men, 180-250 Hz for women) with period jitter and amplitude shimmer, shaped by a two-pole
glottal low-pass :math:`G(z) = 1 / (1 - \\rho z^{-1})^2` whose pole radius :math:`\\rho` sets the
speaker's spectral tilt, plus aspiration noise (breathiness). It drives a cascade of formant
resonators

.. math:: H_k(z) = \\frac{1 - 2 r_k \\cos\\theta_k + r_k^2}{1 - 2 r_k \\cos\\theta_k z^{-1} + r_k^2 z^{-2}},
          \\quad r_k = e^{-\\pi B_k / f_s}, \\; \\theta_k = 2 \\pi F_k / f_s,

whose formant frequencies :math:`F_k` glide between phone targets and are multiplied by the
speaker's vocal-tract scale (shorter vocal tracts, as in women, raise every formant). Fricatives
and stop bursts are band-pass filtered noise. Each word is a fixed sequence of 2-3 phones; each
take varies timing, pitch level and contour, loudness, onset and background noise. Accents
(made up) move the formants of some vowels and change the pitch contour and vowel length.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
from scipy.signal import lfilter

from privkit.data.synthetic import register_builtin

SAMPLE_RATE = 8000
BLOCK = 80  # samples per 10 ms block over which formant filters are held constant
GENDERS = ("female", "male")
ACCENTS = ("northern", "southern", "coastal")
WORDS = ("ba", "dee", "go", "shu", "mai", "kes", "so", "nu", "fae", "tim")
_NYQUIST_GUARD = 0.92 * SAMPLE_RATE / 2  # resonators too close to Nyquist are unstable/aliased
_BANDWIDTHS = np.array([70.0, 100.0, 160.0, 250.0])

# Phone targets (formants in Hz for an average male vocal tract, Peterson & Barney 1952 style).
_VOWELS = {
    "a": (730, 1090, 2440),
    "i": (270, 2290, 3010),
    "u": (300, 870, 2240),
    "e": (530, 1840, 2480),
    "o": (570, 840, 2410),
    "ae": (660, 1720, 2410),
}
# name -> (kind, formant locus, noise centre Hz, noise bandwidth Hz, voiced)
_CONSONANTS = {
    "b": ("stop", (250, 900, 2200), 700, 900, True),
    "d": ("stop", (250, 1700, 2600), 2600, 1400, True),
    "g": ("stop", (250, 2000, 2200), 1900, 800, True),
    "k": ("stop", (300, 1900, 2300), 1800, 900, False),
    "t": ("stop", (300, 1700, 2700), 3200, 1000, False),
    "s": ("fricative", (300, 1600, 2600), 3450, 600, False),
    "sh": ("fricative", (300, 1800, 2500), 2500, 900, False),
    "f": ("fricative", (300, 1200, 2500), 2600, 2600, False),
    "m": ("nasal", (260, 1100, 2300), 0, 0, True),
    "n": ("nasal", (260, 1600, 2500), 0, 0, True),
}
_WORD_PHONES = {
    "ba": ("b", "a"),
    "dee": ("d", "i"),
    "go": ("g", "o"),
    "shu": ("sh", "u"),
    "mai": ("m", "a", "i"),
    "kes": ("k", "e", "s"),
    "so": ("s", "o"),
    "nu": ("n", "u"),
    "fae": ("f", "ae"),
    "tim": ("t", "i", "m"),
}
# Accent -> (per-vowel formant multipliers, vowel length factor, pitch contour end/start ratio).
_ACCENT_RULES = {
    "northern": ({"u": (1.0, 1.45, 1.0), "o": (0.9, 1.35, 1.0)}, 0.9, 1.12),  # fronted back vowels, rising
    "southern": ({"i": (1.5, 0.85, 0.95), "e": (1.25, 0.85, 1.0), "a": (1.0, 1.2, 1.0)}, 1.25, 0.8),  # lax, drawled
    "coastal": ({"ae": (0.8, 1.15, 1.0), "a": (0.85, 0.85, 0.9)}, 1.0, 0.95),
}


@dataclass(frozen=True)
class _Speaker:
    name: str
    gender: int
    accent: int
    f0: float
    formant_scale: float
    formant_tweak: np.ndarray  # per-formant individual factors (F1..F4)
    glottal_pole: float  # spectral tilt: closer to 1 = steeper tilt, duller voice
    breathiness: float
    jitter: float
    shimmer: float
    rate: float  # duration factor


def _make_speakers(seed: int, n_speakers: int) -> list[_Speaker]:
    rng = np.random.default_rng([seed, 0x5EEC])
    speakers = []
    per_gender = (n_speakers + 1) // 2
    # Spread each gender's pitches over its range so that speakers are distinguishable by voice.
    slots = {g: rng.permutation(per_gender) for g in (0, 1)}
    for s in range(n_speakers):
        gender = s % 2
        accent = (s // 2) % len(ACCENTS)
        low, high = (180.0, 250.0) if gender == 0 else (100.0, 140.0)
        slot = slots[gender][s // 2]
        f0 = low + (high - low) * (slot + rng.uniform(0.2, 0.8)) / per_gender
        speakers.append(
            _Speaker(
                name=f"spk{s:02d}",
                gender=gender,
                accent=accent,
                f0=f0,
                formant_scale=rng.uniform(1.12, 1.24) if gender == 0 else rng.uniform(0.92, 1.04),
                formant_tweak=rng.uniform(0.94, 1.06, size=4),
                glottal_pole=rng.uniform(0.82, 0.97),
                breathiness=rng.uniform(0.01, 0.12) * (1.6 if gender == 0 else 1.0),
                jitter=rng.uniform(0.004, 0.02),
                shimmer=rng.uniform(0.02, 0.08),
                rate=rng.uniform(0.85, 1.15),
            )
        )
    return speakers


def _segments(word: str, speaker: _Speaker, rng: np.random.Generator) -> list[dict]:
    """Phone segments of one take: duration (s), formant targets, voicing and noise levels."""
    vowel_shift, vowel_length, _ = _ACCENT_RULES[ACCENTS[speaker.accent]]
    tempo = speaker.rate * rng.uniform(0.88, 1.12)
    segments = []
    for phone in _WORD_PHONES[word]:
        if phone in _VOWELS:
            formants = np.array(_VOWELS[phone], float) * np.array(vowel_shift.get(phone, (1.0, 1.0, 1.0)))
            duration = 0.2 * vowel_length * tempo * rng.uniform(0.9, 1.1)
            if segments and segments[-1]["voice"] == 1.0:
                duration *= 0.7  # second half of a diphthong
            segments.append(dict(dur=duration, formants=formants, voice=1.0, noise=0.0, fc=0.0, bw=0.0))
            continue
        kind, locus, fc, bw, voiced = _CONSONANTS[phone]
        locus = np.array(locus, float)
        if kind == "stop":
            # Closure (a low voice bar when voiced), release burst, aspiration when voiceless.
            segments.append(dict(dur=0.05 * tempo, formants=locus, voice=0.12 if voiced else 0.0, noise=0.0, fc=fc, bw=bw))
            segments.append(dict(dur=0.015, formants=locus, voice=0.3 if voiced else 0.0, noise=1.0, fc=fc, bw=bw))
            if not voiced:
                segments.append(dict(dur=0.035 * tempo, formants=locus, voice=0.0, noise=0.35, fc=1600.0, bw=2500.0))
        elif kind == "fricative":
            segments.append(dict(dur=0.12 * tempo, formants=locus, voice=0.0, noise=0.9 if phone != "f" else 0.5, fc=fc, bw=bw))
        else:  # nasal: weak, low, voiced
            segments.append(dict(dur=0.085 * tempo, formants=locus, voice=0.35, noise=0.0, fc=0.0, bw=0.0))
    return segments


def _trajectory(times: np.ndarray, segments: list[dict], key: str, glide: float) -> np.ndarray:
    """Piecewise-linear trajectory holding each segment's target with ``glide``-second transitions."""
    knots_t, knots_v = [], []
    start = 0.0
    for seg in segments:
        end = start + seg["dur"]
        half = min(glide, seg["dur"] / 2.0)
        value = np.asarray(seg[key], float)
        knots_t += [start + half * 0.999, end - half]
        knots_v += [value, value]
        start = end
    knots_v = np.array(knots_v)
    if knots_v.ndim == 1:
        return np.interp(times, knots_t, knots_v)
    return np.stack([np.interp(times, knots_t, knots_v[:, k]) for k in range(knots_v.shape[1])], axis=-1)


def _formant_cascade(freqs: np.ndarray, bandwidths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Numerator gain and denominator polynomial of the cascade of unity-DC-gain resonators.

    ``freqs`` and ``bandwidths`` have shape ``(n_blocks, n_formants)``; returns ``b`` of shape
    ``(n_blocks,)`` and ``a`` of shape ``(n_blocks, 2 n_formants + 1)``. One high-order
    ``lfilter`` per block is several times cheaper than a cascade of sections, and the orders used
    here (8) are well conditioned in float64.
    """
    r = np.exp(-np.pi * bandwidths / SAMPLE_RATE)
    c = 2.0 * r * np.cos(2.0 * np.pi * freqs / SAMPLE_RATE)
    gain = np.prod(1.0 - c + r**2, axis=1)
    poly = np.ones((freqs.shape[0], 1))
    for k in range(freqs.shape[1]):
        grown = np.zeros((poly.shape[0], poly.shape[1] + 2))
        grown[:, :-2] += poly
        grown[:, 1:-1] -= poly * c[:, k : k + 1]
        grown[:, 2:] += poly * r[:, k : k + 1] ** 2
        poly = grown
    return gain, poly


def _bandpass(centre: float, bandwidth: float) -> tuple[np.ndarray, np.ndarray]:
    """A constant-peak-gain two-pole band-pass (zeros at DC and Nyquist): ``(b, a)``."""
    r = np.exp(-np.pi * bandwidth / SAMPLE_RATE)
    c = 2.0 * r * np.cos(2.0 * np.pi * centre / SAMPLE_RATE)
    gain = (1.0 - r**2) / 2.0
    return np.array([gain, 0.0, -gain]), np.array([1.0, -c, r**2])


def _synthesise(word: str, speaker: _Speaker, rng: np.random.Generator) -> np.ndarray:
    segments = _segments(word, speaker, rng)
    speech_len = sum(seg["dur"] for seg in segments)
    total = max(rng.uniform(0.6, 0.8), speech_len + 0.06)
    lead = rng.uniform(0.03, max(0.031, total - speech_len - 0.03))
    n = int(round(total * SAMPLE_RATE))
    n_speech = int(np.ceil(speech_len * SAMPLE_RATE))
    t = np.arange(n_speech) / SAMPLE_RATE

    # Glottal source: pulses at F0(t) with jitter and shimmer (one loop iteration per period).
    _, _, contour_end = _ACCENT_RULES[ACCENTS[speaker.accent]]
    f0_level = speaker.f0 * rng.uniform(0.93, 1.07)
    contour_end *= rng.uniform(0.95, 1.05)
    pulses = np.zeros(n_speech)
    position = rng.uniform(0, SAMPLE_RATE / f0_level)
    while position < n_speech:
        frac = position / n_speech
        f0 = f0_level * (1.0 + (contour_end - 1.0) * frac)
        pulses[int(position)] += 1.0 + speaker.shimmer * rng.standard_normal()
        position += SAMPLE_RATE / f0 * (1.0 + speaker.jitter * rng.standard_normal())
    rho = speaker.glottal_pole
    glottal = lfilter([1.0 - rho], [1.0, -2 * rho, rho**2], pulses)
    glottal = np.diff(glottal, prepend=0.0)  # lip radiation: +6 dB/octave
    glottal /= np.max(np.abs(glottal)) + 1e-12
    voice_amp = _trajectory(t, segments, "voice", glide=0.008)
    noise_amp = _trajectory(t, segments, "noise", glide=0.004)
    edge = np.minimum(1.0, np.minimum(t, t[-1] - t) / 0.03)  # fade in/out the word
    voiced_source = voice_amp * edge * (glottal + speaker.breathiness * rng.standard_normal(n_speech))

    # Time-varying formant cascade: targets glide between phones; held per 10 ms block.
    n_blocks = int(np.ceil(n_speech / BLOCK))
    block_t = (np.arange(n_blocks) + 0.5) * BLOCK / SAMPLE_RATE
    formants = _trajectory(block_t, segments, "formants", glide=0.035)
    f4 = np.full((n_blocks, 1), 3300.0)
    formants = np.concatenate([formants, f4], axis=1) * speaker.formant_scale * speaker.formant_tweak
    formants = np.minimum(formants, _NYQUIST_GUARD)
    bandwidths = _BANDWIDTHS * speaker.formant_scale * rng.uniform(0.9, 1.1, size=4)
    cascade_gain, cascade_poly = _formant_cascade(formants, np.broadcast_to(bandwidths, formants.shape))
    fc = _trajectory(block_t, segments, "fc", glide=0.001)
    bw = _trajectory(block_t, segments, "bw", glide=0.001)
    frication_source = noise_amp * rng.standard_normal(n_speech)
    voiced = np.zeros(n_speech)
    frication = np.zeros(n_speech)
    state_v = np.zeros(cascade_poly.shape[1] - 1)
    state_f = np.zeros(2)
    for k in range(n_blocks):
        block = slice(k * BLOCK, min((k + 1) * BLOCK, n_speech))
        voiced[block], state_v = lfilter(cascade_gain[k : k + 1], cascade_poly[k], voiced_source[block], zi=state_v)
        if fc[k] > 0:
            centre = min(fc[k] * np.sqrt(speaker.formant_scale), _NYQUIST_GUARD)
            b, a = _bandpass(centre, bw[k])
            frication[block], state_f = lfilter(b, a, frication_source[block], zi=state_f)
    voiced /= np.max(np.abs(voiced)) + 1e-12
    frication /= max(np.max(np.abs(frication)), 1.0) + 1e-12
    word_signal = voiced + 0.6 * frication

    signal = np.zeros(n)
    start = int(lead * SAMPLE_RATE)
    signal[start : start + n_speech] = word_signal[: n - start]
    signal *= rng.uniform(0.3, 0.7) / (np.max(np.abs(signal)) + 1e-12)
    speech_rms = np.sqrt(np.mean(word_signal**2)) * np.max(np.abs(signal)) / (np.max(np.abs(word_signal)) + 1e-12)
    snr_db = rng.uniform(22.0, 35.0)
    signal += rng.standard_normal(n) * speech_rms * 10 ** (-snr_db / 20)
    return np.clip(signal, -1.0, 1.0)


def _speakers_and_takes(size: int) -> tuple[int, int]:
    n_speakers = int(np.clip(2 * round(size / 80), 6, 12))
    takes = max(1, round(size / (n_speakers * len(WORDS))))
    return n_speakers, takes


@register_builtin(
    "synthetic-speech",
    "source-filter synthesised words (10 words) in the FSDD layout: word, speaker, gender, accent",
    default_size=1200,
    layout="fsdd",
    min_size=60,
)
def write_speech(out_dir: Path, size: int, seed: int, progress=None) -> None:
    """Write about ``size`` recordings (speakers x 10 words x takes) in the FSDD layout."""
    out_dir = Path(out_dir)
    n_speakers, takes = _speakers_and_takes(size)
    speakers = _make_speakers(seed, n_speakers)
    recordings = out_dir / "recordings"
    recordings.mkdir(parents=True)
    total = n_speakers * len(WORDS) * takes
    done = 0
    for speaker_index, speaker in enumerate(speakers):
        for word_index, word in enumerate(WORDS):
            for take in range(takes):
                rng = np.random.default_rng([seed, 0x5EEC, speaker_index, word_index, take])
                audio = _synthesise(word, speaker, rng)
                pcm = np.round(audio * 32767).astype(np.int16)
                soundfile.write(
                    recordings / f"{word_index}_{speaker.name}_{take}.wav", pcm, SAMPLE_RATE, subtype="PCM_16"
                )
                done += 1
                if progress is not None:
                    progress(done, total)
    with open(out_dir / "speakers.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["speaker", "gender", "accent"])
        for speaker in speakers:
            writer.writerow([speaker.name, GENDERS[speaker.gender], ACCENTS[speaker.accent]])
    layout = {"label_name": "word", "label_classes": list(WORDS)}
    (out_dir / "privkit_layout.json").write_text(json.dumps(layout, indent=2) + "\n", encoding="utf-8")
