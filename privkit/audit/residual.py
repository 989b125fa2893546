r"""Residual knowledge of an unlearned model (Hsu et al., NeurIPS 2025, arXiv 2601.22359).

Certified unlearning compares an unlearned model :math:`m` with a model :math:`a` retrained
without the forget set only *at* the forget samples. A slightly perturbed forget sample may still
be recognised by :math:`m` although :math:`a` never learned it. The *residual knowledge* of a
forget sample :math:`(x, y)` at radius :math:`\tau` is

.. math::

    r_\tau(x, y) = \frac{\Pr_{x' \in B_p(x, \tau)}[m(x') = y]}{\Pr_{x' \in B_p(x, \tau)}[a(x') = y]},

with :math:`B_p(x, \tau) = \{x' : \lVert x' - x \rVert_p \le \tau\}`. :math:`r_\tau > 1` means the
unlearned model recognises the neighbourhood of the forget sample better than a model that never
saw it.

Estimation (:func:`residual_knowledge`): for every forget sample draw :math:`K` perturbations
:math:`x'_1, \dots, x'_K` with a registered sampler (clipped to the valid input range), feed the
*same* perturbations to both models, count the correct predictions :math:`k_m` and :math:`k_a`,
and use the add-one smoothed ratio

.. math::

    \hat r_\tau(x, y) = \frac{k_m + 1}{k_a + 1},

which stays finite when the reference never recognises the neighbourhood. Per :math:`\tau` the
result reports the mean of :math:`\hat r_\tau` over forget samples with a confidence interval
(percentile bootstrap over forget samples, seeded; or a Student-t interval), the fraction of forget
samples with :math:`\hat r_\tau > 1`, and both raw recognition rates :math:`\sum k / (N K)`.

Two tiers:

* ``tier="reference"`` -- a retrained reference model :math:`a` is available (the paper's setting).
* ``tier="heldout"`` -- weaker, when no retrained model exists: the denominator is the recognition
  rate of :math:`m` itself on the neighbourhoods of *held-out* samples of the same class,
  :math:`\hat r_\tau(x, y) = (k_m + 1) / (K \bar p_{\text{held-out}}(y) + 1)`. It measures whether
  the forget samples' neighbourhoods are recognised better than those of comparable samples the
  model never trained on, which is evidence of memorisation but not a comparison with retraining.

Randomness: the perturbations of forget sample number :math:`i` (in the order given) are drawn from
their own generator seeded by ``(seed, i)``, so results do not depend on ``batch_size`` or on how
``x`` is split into batches, and the same unit draws are reused for every :math:`\tau` (common
random numbers: the curves over :math:`\tau` are smooth rather than noisy).
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from privkit.errors import ConfigError
from privkit.registry import Registry

__all__ = [
    "NORMS",
    "SAMPLERS",
    "CI_METHODS",
    "register_sampler",
    "register_ci",
    "bootstrap_index_dtype",
    "NoiseStreams",
    "splitmix64_keys",
    "splitmix64_words",
    "sample_ball",
    "project_ball",
    "residual_knowledge",
    "residual_knowledge_loop",
    "ResidualResult",
]

NORMS = ("linf", "l2")

#: name -> sampler; see :func:`register_sampler` for the signature.
SAMPLERS = Registry("sampler")

#: name -> confidence-interval function ``(values, confidence, rng) -> (low, high)``: ``values`` is
#: ``(T, N)`` (one row of per-sample ratios per radius, or ``(N,)``) and the bounds are ``(T,)``
#: (or scalars), so a method can share work across radii as the bootstrap does.
CI_METHODS = Registry("confidence-interval method")

# A generator seed is 64 bits; (seed, index) pairs are mixed into it with a large odd multiplier
# so that neighbouring forget samples and neighbouring seeds give unrelated streams.
_SEED_MIX = 0x9E3779B97F4A7C15
_SEED_MASK = (1 << 63) - 1
#: ``ResidualResult.draws`` of the default L-inf unit draws (16-bit grid points from SplitMix64 words)
DEFAULT_DRAWS = "grid16-splitmix64"
# 16-bit unit-cube draws per 64-bit random word (NoiseStreams.unit_cube)
_LANES_PER_WORD = 4
# Most bytes of random words mixed at once. One block covers a whole chunk of a small model (more
# calls would cost more than they save); for larger inputs it bounds the words and the mixer's
# scratch, which share the audit's workspace: a workspace above glibc's largest mmap threshold
# (32 MiB) is mapped afresh and faulted in at every audit (the 784-input MLP's, at 4 MiB blocks).
_WORD_BLOCK_BYTES = 1 << 20
# SplitMix64 (Steele, Lea & Flood, OOPSLA 2014): the state advances by the golden gamma and each
# output is the state passed through a fixed bijective mixer, so output j of the stream with key k
# is mix(k + (j + 1) gamma): any word is a function of (k, j) alone.
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
_MIX_STEPS = ((30, 0xBF58476D1CE4E5B9), (27, 0x94D049BB133111EB), (31, None))  # xor-shift, then multiply


def _as_int64(value: int) -> int:
    """The int64 with the same 64 bits as the unsigned ``value`` (torch tensors have no uint64 arithmetic)."""
    return value - (1 << 64) if value >= 1 << 63 else value


def _mix64_(z: np.ndarray, spare: np.ndarray) -> np.ndarray:
    """SplitMix64's output mixer, in place on a uint64 array (``spare``: scratch of the same shape).

    ``z ^= z >> 30; z *= 0xBF58476D1CE4E5B9; z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31``,
    modulo 2^64 (numpy's unsigned array arithmetic wraps around).
    """
    for shift, multiplier in _MIX_STEPS:
        np.right_shift(z, np.uint64(shift), out=spare)
        np.bitwise_xor(z, spare, out=z)
        if multiplier is not None:
            np.multiply(z, np.uint64(multiplier), out=z)
    return z


def _mix64_torch_(z: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
    """:func:`_mix64_` on int64 tensors of any device, giving the same 64 bits.

    ``>>`` on int64 copies the sign bit, so the shifted-in bits are masked off to make it the logical
    shift of the mixer; a product keeps its low 64 bits, which are those of the unsigned product.
    """
    for shift, multiplier in _MIX_STEPS:
        torch.bitwise_right_shift(z, shift, out=spare)
        spare.bitwise_and_((1 << (64 - shift)) - 1)
        z.bitwise_xor_(spare)
        if multiplier is not None:
            z.mul_(_as_int64(multiplier))
    return z


def splitmix64_keys(seeds: Sequence[int]) -> np.ndarray:
    """Stream keys ``mix(seed + gamma)`` (uint64), the first SplitMix64 output of each 63-bit seed.

    Keying through the mixer turns the per-sample seeds of :meth:`NoiseStreams.for_samples`, an
    arithmetic progression in the sample index, into unrelated starting points.
    """
    keys = np.asarray(seeds, dtype=np.uint64) + np.uint64(_GOLDEN_GAMMA)
    return _mix64_(keys, np.empty_like(keys))


def splitmix64_words(keys: np.ndarray, out: torch.Tensor, spare: torch.Tensor | None = None) -> torch.Tensor:
    r"""Words ``0 .. W - 1`` of the SplitMix64 streams keyed ``keys``, written into ``out``.

    ``out[i, j] = mix(k_i + (j + 1) \gamma)`` as the 64 bits of an int64 tensor ``(len(keys), W)``;
    ``spare`` is scratch of the same shape (allocated when not given). A counter-based generator:
    every word depends on its key and position only, so all samples of a chunk are drawn with a
    few whole-array operations (numpy on the CPU, torch elsewhere) instead of one seeded generator
    call per sample, and a sample's words do not depend on the samples drawn with it.
    """
    if spare is None:
        spare = torch.empty_like(out)
    if out.device.type != "cpu":
        return _splitmix64_words_torch(keys, out, spare)
    z = out.numpy().view(np.uint64)
    positions = np.arange(1, out.shape[1] + 1, dtype=np.uint64)
    np.multiply(positions, np.uint64(_GOLDEN_GAMMA), out=positions)
    np.add(np.asarray(keys, dtype=np.uint64)[:, None], positions[None, :], out=z)
    _mix64_(z, spare.numpy().view(np.uint64))
    return out


def _splitmix64_words_torch(keys: np.ndarray, out: torch.Tensor, spare: torch.Tensor) -> torch.Tensor:
    """:func:`splitmix64_words` with torch operations on ``out``'s device (a GPU: no host round trip)."""
    positions = torch.arange(1, out.shape[1] + 1, dtype=torch.int64, device=out.device)
    positions.mul_(_as_int64(_GOLDEN_GAMMA))
    key_bits = torch.from_numpy(np.asarray(keys, dtype=np.uint64).view(np.int64)).to(out.device)
    torch.add(key_bits[:, None], positions[None, :], out=out)
    return _mix64_torch_(out, spare)


def register_sampler(name: str):
    """Register a perturbation sampler under ``name`` (decorator).

    A sampler is called as ``sampler(x, y, *, tau, norm, samples, streams, clip, model, **options)``
    with ``x`` of shape ``(B, *input_shape)`` and returns perturbed inputs of shape
    ``(B, samples, *input_shape)``, each within the valid input range ``clip``. ``streams`` is a
    :class:`NoiseStreams` giving one random generator per sample. A sampler that declares an ``out``
    keyword (as ``uniform`` and ``gaussian`` do) is handed a buffer of that shape to write into, so the
    audit reuses one buffer for every chunk and radius; the others return new tensors.
    """
    return SAMPLERS.register(name)


def register_ci(name: str):
    """Register a confidence-interval method for the mean of per-sample ratios (decorator).

    The method is called as ``fn(values, confidence, rng)`` with ``values`` of shape ``(T, N)``, one
    row per radius, and returns ``(low, high)``, each of shape ``(T,)``.
    """
    return CI_METHODS.register(name)


class Workspace:
    """Named scratch tensors of one audit, carved from a single allocation.

    An audit of a small model runs many forward passes whose activations the allocator recycles.
    Allocating the audit's own buffers (perturbed inputs, random draws, predictions) one by one, in
    between, could change the heap so that glibc handed the activation memory back to the system
    after every forward pass and faulted it in again: in one run of ``benchmarks/bench_residual.py``
    the previous estimator took 17,538 minor page faults per audit of the 64-input MLP and ran at
    0.36 of the bare forward speed. One allocation for all of them leaves the heap to the forward
    passes, as in a bare forward.

    Parameters
    ----------
    nbytes : int
        Reserved bytes; a slot that does not fit gets its own allocation.
    device : torch.device or str
    """

    ALIGN = 64  # bytes; every slot starts on a cache line, which also aligns any dtype's view

    def __init__(self, nbytes: int, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self._arena = torch.empty(int(nbytes), dtype=torch.uint8, device=self.device)
        self._used = 0
        self._slots: dict[str, torch.Tensor] = {}

    def get(self, name: str, shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A contiguous tensor of ``shape`` in slot ``name`` (contents undefined; the slot is reused).

        A slot keeps the size of its first request; a larger request or another dtype gets new
        memory (outside the reserve once it is used up).
        """
        size = math.prod(shape)
        slot = self._slots.get(name)
        if slot is None or slot.dtype != dtype or slot.numel() < size:
            nbytes = size * torch.empty((), dtype=dtype).element_size()
            start = -(-self._used // self.ALIGN) * self.ALIGN
            if start + nbytes <= self._arena.numel():
                slot = self._arena[start:start + nbytes].view(dtype)
                self._used = start + nbytes
            else:
                slot = torch.empty(size, dtype=dtype, device=self.device)
            self._slots[name] = slot
        return slot[:size].view(shape)


class NoiseStreams:
    r"""One random stream per sample, keyed by a per-sample seed, so draws are reproducible.

    Drawing per sample (rather than one tensor for the whole batch) makes the perturbations of a
    sample independent of which other samples share its batch, so the batched estimator and the
    plain loop see exactly the same perturbations, whatever the batch size.

    Unit-cube draws (:meth:`unit_cube`, the L-inf ball's :math:`W`) come in two kinds:

    * ``exact=False`` (default): 16-bit grid points from a counter-based generator. Word :math:`j`
      of sample :math:`i` is the SplitMix64 output :math:`\operatorname{mix}(k_i + (j + 1)\gamma)`
      with key :math:`k_i = \operatorname{mix}(s_i + \gamma)` and seed :math:`s_i`
      (:func:`splitmix64_words`), computed for all samples of a chunk in a few array operations.
      Each 64-bit word gives four 16-bit integers :math:`I \in \{-2^{15}, \dots, 2^{15} - 1\}` and
      :math:`W = (2I + 1) / 2^{16}`, the midpoints of :math:`2^{16}` equal cells of :math:`[-1, 1]`:
      uniform to within :math:`2^{-16}` of the radius (Kolmogorov distance :math:`\le 2^{-16}` per
      coordinate), symmetric, strictly inside the ball. (The previous release took these words from
      one seeded torch generator per sample; the grid and its distribution are unchanged.)
    * ``exact=True``: ``torch.rand``'s 24-bit floats mapped to :math:`[-1, 1)`, one seeded torch
      generator per sample (the streams of earlier privkit versions, bit for bit).

    The Gaussian and L2 draws (:meth:`fill`, :meth:`per_sample`) use one seeded torch generator per
    sample in both kinds.

    Parameters
    ----------
    seeds : sequence of int
        One 63-bit seed per sample.
    device : torch.device or str
    exact : bool
        Draw unit-cube values as ``torch.rand`` floats rather than 16-bit grid points (see above).
    workspace : Workspace, optional
        Memory shared by the streams of successive chunks (the estimator passes one per audit, see
        :class:`Workspace`): each kind of draw is written into its own slot of it, so the next draw
        of that kind, by these or later streams sharing the workspace, overwrites it. Without a
        workspace every draw gets new memory.
    """

    def __init__(self, seeds: Sequence[int], device: torch.device | str = "cpu", exact: bool = False,
                 workspace: Workspace | None = None):
        self.seeds = [int(s) for s in seeds]
        self.device = torch.device(device)
        self.exact = bool(exact)
        self._cache: dict[tuple, torch.Tensor] = {}
        self._workspace = workspace

    def _scratch(self, name: str, shape: tuple, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """A tensor of ``shape`` in the workspace slot ``name``, grown when too small (contents undefined)."""
        if self._workspace is None:
            return torch.empty(shape, dtype=dtype, device=self.device)
        return self._workspace.get(name, shape, dtype)

    def cached(self, key: tuple, make: Callable[[], torch.Tensor]) -> torch.Tensor:
        """``make()`` once per ``key`` for these streams; later calls return the same tensor.

        Every draw re-seeds, so drawing again would give the very same numbers: the cache only saves
        the work when one chunk of samples is perturbed at several radii (common random numbers).
        Callers must treat the returned tensor as read-only.
        """
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @classmethod
    def for_samples(cls, seed: int, indices: Sequence[int], device="cpu", exact: bool = False,
                    workspace: Workspace | None = None) -> "NoiseStreams":
        """Streams of the samples numbered ``indices`` under the audit seed ``seed``."""
        return cls([((int(seed) + 1) * _SEED_MIX + int(i) * 0x85EBCA6B) & _SEED_MASK for i in indices], device,
                   exact=exact, workspace=workspace)

    @classmethod
    def from_generator(cls, generator: torch.Generator, count: int, device="cpu",
                       exact: bool = False) -> "NoiseStreams":
        """Streams for ``count`` samples whose seeds are drawn from ``generator`` (used by RURK)."""
        return cls(torch.randint(0, 2**62, (count,), generator=generator).tolist(), device, exact=exact)

    def __len__(self) -> int:
        return len(self.seeds)

    def fill(self, kind: str, shape: tuple, low: float = 0.0, high: float = 1.0) -> torch.Tensor:
        """``(B, *shape)`` draws written in place (no stacking copy).

        ``kind`` ``"rand"``: uniform on ``[low, high)``; ``"randn"``: standard normal. ``uniform_(-1, 1)``
        gives bit for bit the numbers of ``rand() * 2 - 1`` (torch maps the same 24 random bits through
        ``u * (high - low) + low`` in double precision, exact here), without the two extra passes.
        """
        out = self._scratch(kind, (len(self.seeds), *shape))
        gen = torch.Generator(device=self.device)
        if kind == "rand":
            for s, row in zip(self.seeds, out.unbind(0)):
                gen.manual_seed(s)
                row.uniform_(low, high, generator=gen)
        else:
            for s, row in zip(self.seeds, out.unbind(0)):
                gen.manual_seed(s)
                row.normal_(generator=gen)
        return out

    def unit_cube(self, shape: tuple) -> torch.Tensor:
        r"""``(B, *shape)`` draws uniform in the unit L-inf ball :math:`[-1, 1]^d`, one row per sample.

        16-bit grid points :math:`(2I + 1) / 2^{16}` from the samples' SplitMix64 words unless
        ``exact`` (then ``torch.rand`` floats on :math:`[-1, 1)`); see the class docstring. The four
        16-bit integers of a 64-bit word are read in the machine's byte order (little-endian on x86
        and ARM), so a big-endian machine would give the same values in another order.
        """
        if self.exact:
            return self.fill("rand", shape, -1.0, 1.0)
        rows, count = len(self.seeds), math.prod(shape)
        words = -(-count // _LANES_PER_WORD)
        keys = splitmix64_keys(self.seeds)
        out = self._scratch("unit_cube", (rows, *shape))
        flat = out.view(rows, count)
        block = max(1, min(rows, _WORD_BLOCK_BYTES // max(1, 8 * words)))  # rows of words mixed at once
        bits = self._scratch("bits", (block, words), torch.int64)
        spare = self._scratch("bits_spare", (block, words), torch.int64)
        half_cell = torch.tensor(2.0 ** -16, device=self.device)
        for first in range(0, rows, block):
            last = min(rows, first + block)
            lanes = splitmix64_words(keys[first:last], bits[:last - first], spare[:last - first]).view(torch.int16)
            # W = I / 2^15 + 1 / 2^16, exact in float32; converting first and scaling in place is
            # cheaper than one mixed-type pass
            rows_out = flat[first:last].copy_(lanes[:, :count])
            torch.add(half_cell, rows_out, alpha=2.0 ** -15, out=rows_out)
        return out

    def per_sample(self, draw: Callable[[torch.Generator], torch.Tensor | tuple]):
        """Stack ``draw(generator)`` over samples (element-wise when ``draw`` returns a tuple)."""
        out = []
        gen = torch.Generator(device=self.device)
        for s in self.seeds:
            gen.manual_seed(s)
            out.append(draw(gen))
        if out and isinstance(out[0], tuple):
            return tuple(torch.stack(parts) for parts in zip(*out))
        return torch.stack(out)


# --------------------------------------------------------------------------------------------
# geometry: drawing in and projecting onto the tau-ball
# --------------------------------------------------------------------------------------------
def _clip(x: torch.Tensor, clip: tuple[float, float] | None) -> torch.Tensor:
    return x if clip is None else x.clamp_(clip[0], clip[1])


def _flat_norm(delta: torch.Tensor, start_dim: int) -> torch.Tensor:
    """L2 norm over all dimensions from ``start_dim`` on, shaped to broadcast back onto ``delta``."""
    n = delta.flatten(start_dim).norm(dim=-1)
    return n.reshape(*n.shape, *([1] * (delta.dim() - start_dim)))


def project_ball(x_adv: torch.Tensor, x: torch.Tensor, tau: float, norm: str,
                 clip: tuple[float, float] | None) -> torch.Tensor:
    r"""Project ``x_adv`` (shape ``(B, K, *s)``) onto :math:`B_p(x, \tau)`, then into the clip box.

    Clipping after the projection cannot leave the ball when ``x`` itself lies in the box: moving a
    coordinate towards the box moves it towards :math:`x_i`, which shrinks every :math:`|x'_i - x_i|`.
    """
    delta = x_adv - x.unsqueeze(1)
    if norm == "linf":
        delta = delta.clamp(-tau, tau)
    else:
        scale = (tau / _flat_norm(delta, 2).clamp_min(1e-12)).clamp(max=1.0)
        delta = delta * scale
    return _clip(x.unsqueeze(1) + delta, clip)


def sample_ball(x: torch.Tensor, tau: float, norm: str, samples: int, streams: NoiseStreams,
                clip: tuple[float, float] | None, out: torch.Tensor | None = None) -> torch.Tensor:
    r"""Uniform draws in :math:`B_p(x, \tau)`, clipped: ``(B, *s) -> (B, samples, *s)``.

    L-inf: :math:`x' = x + \tau W` with :math:`W` uniform in :math:`[-1, 1]^d`
    (:meth:`NoiseStreams.unit_cube`: 16-bit grid points, or ``torch.rand`` floats if ``exact``). L2: direction
    :math:`g / \lVert g \rVert_2` with :math:`g \sim \mathcal N(0, I_d)`, radius :math:`\tau U^{1/d}`
    (the radius law of the uniform distribution in a :math:`d`-ball). ``out`` (shape
    ``(B, samples, *s)``, optional) receives the result, so an audit of many radii reuses one buffer.
    """
    shape = tuple(x.shape[1:])
    d = math.prod(shape)
    if norm == "linf":
        # W uniform in the unit L-inf ball; x' = x + tau W
        def unit_ball():
            return streams.unit_cube((samples, *shape))
    else:
        def unit_ball():
            def draw(g):
                direction = torch.randn((samples, *shape), generator=g, device=streams.device)
                radius = torch.rand((samples,), generator=g, device=streams.device).pow_(1.0 / d)
                return direction, radius

            direction, radius = streams.per_sample(draw)
            direction = direction / _flat_norm(direction, 2).clamp_min(1e-12)
            return direction.mul_(radius.reshape(*radius.shape, *([1] * len(shape))))
    # the unit draws are the same at every tau, so they are made once per chunk of samples
    unit = streams.cached(("ball", norm, samples, shape), unit_ball)
    return _clip(torch.add(x.unsqueeze(1), unit, alpha=tau, out=out), clip)


@register_sampler("uniform")
def uniform_sampler(x, y, *, tau, norm, samples, streams, clip, model=None, out=None, **options):
    r"""Uniform in the L-inf or L2 ball of radius :math:`\tau` around ``x``, clipped to ``clip``."""
    return sample_ball(x, tau, norm, samples, streams, clip, out=out)


@register_sampler("gaussian")
def gaussian_sampler(x, y, *, tau, norm, samples, streams, clip, model=None, out=None, **options):
    r"""Isotropic Gaussian noise, clipped to ``clip``.

    :math:`\sigma = \tau` per dimension for ``linf``; :math:`\sigma = \tau / \sqrt d` for ``l2`` so the
    expected squared L2 length of the noise is :math:`\tau^2`. Gaussian draws are *not* confined to
    the ball: this sampler probes a soft neighbourhood of scale :math:`\tau`.
    """
    shape = tuple(x.shape[1:])
    sigma = tau if norm == "linf" else tau / math.sqrt(math.prod(shape))
    noise = streams.cached(("randn", samples, shape), lambda: streams.fill("randn", (samples, *shape)))
    return _clip(torch.add(x.unsqueeze(1), noise, alpha=sigma, out=out), clip)


@register_sampler("pgd")
def pgd_sampler(x, y, *, tau, norm, samples, streams, clip, model=None, steps: int = 10,
                step_size: float | None = None, **options):
    r"""Vulnerable perturbations: projected gradient *ascent* on :math:`\log m(y \mid x')` in the ball.

    Starts from ``samples`` uniform draws in the ball (random start), then ``steps`` iterations of
    :math:`x' \leftarrow \Pi_{B_p(x,\tau) \cap \text{clip}}(x' + \alpha\, s(\nabla_{x'} \log m(y|x')))`
    with :math:`s` the sign (L-inf) or the L2-normalised gradient (L2) and
    :math:`\alpha = 2.5 \tau / \text{steps}` unless ``step_size`` is given. Only input gradients are
    computed; the model's parameters are not touched.
    """
    if model is None:
        raise ConfigError("sampler 'pgd' needs the model whose true-class probability it maximises; pass model=")
    alpha = 2.5 * tau / max(1, steps) if step_size is None else float(step_size)
    x_adv = sample_ball(x, tau, norm, samples, streams, clip)
    b, k = x_adv.shape[:2]
    y_rep = y.repeat_interleave(k)
    with torch.enable_grad():
        for _ in range(steps):
            x_adv = x_adv.detach().requires_grad_(True)
            logp = F.log_softmax(model(x_adv.flatten(0, 1)), dim=-1)
            objective = logp.gather(1, y_rep[:, None]).sum()
            (grad,) = torch.autograd.grad(objective, x_adv)
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / _flat_norm(grad, 2).clamp_min(1e-12)
            x_adv = project_ball(x_adv.detach() + alpha * step, x, tau, norm, clip)
    return x_adv.detach()


# --------------------------------------------------------------------------------------------
# confidence intervals for the mean ratio
# --------------------------------------------------------------------------------------------
def bootstrap_index_dtype(n: int) -> np.dtype:
    """The narrowest unsigned integer type holding the resampling indices ``0 .. n - 1``.

    numpy draws bounded integers of 8 and 16 bits several to one 32-bit random word (Lemire's
    method with rejection, so every index stays exactly equally likely); for the few hundred forget
    samples of a typical audit this takes about a third of the time of 32-bit index draws.
    """
    for dtype in (np.uint8, np.uint16, np.uint32):
        if n - 1 <= np.iinfo(dtype).max:
            return np.dtype(dtype)
    return np.dtype(np.int64)


@register_ci("bootstrap")
def bootstrap_ci(values: np.ndarray, confidence: float, rng: np.random.Generator,
                 resamples: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    r"""Percentile bootstrap over forget samples (resamples them with replacement).

    ``values`` is ``(N,)`` or ``(T, N)`` (one row per radius); every row is resampled with the same
    index draws, so the bootstrap costs one set of ``resamples x N`` indices whatever T is. Returns
    the lower and upper bounds, each shaped like ``values`` without its last axis: the
    :math:`(1 \mp c)/2` quantiles of the resample means.

    Each resample's mean is :math:`\frac1N \sum_j c_j v_j` with :math:`c_j` how often it drew sample
    :math:`j`, so a group of resamples is one count matrix (one ``bincount``) times the values of all
    radii (one matrix product) rather than ``resamples x N`` gathered values per radius. The indices
    are drawn ``resamples x N`` at a time (in blocks when that is large) as
    :func:`bootstrap_index_dtype` integers uniform on ``0 .. N - 1``.
    """
    values = np.asarray(values, dtype=np.float64)
    rows = values.reshape(-1, values.shape[-1])
    n = rows.shape[1]
    if n == 1:
        bound = rows[:, 0].reshape(values.shape[:-1])
        return bound.copy(), bound.copy()
    means = np.empty((rows.shape[0], resamples))
    # resample in blocks so memory stays at block * n, not resamples * n
    block = max(1, min(resamples, 2_000_000 // n))
    index_dtype = bootstrap_index_dtype(n)
    # groups of resamples sized so their counts stay in cache
    group = max(1, min(block, 50_000 // n))
    offsets = np.arange(group, dtype=np.int64)[:, None] * n  # resample r of a group counts into r*n .. r*n+n-1
    flat = np.empty((group, n), dtype=np.int64)
    for start in range(0, resamples, block):
        stop = min(resamples, start + block)
        index = rng.integers(0, n, size=(stop - start, n), dtype=index_dtype)
        for g0 in range(0, stop - start, group):
            part = index[g0:g0 + group]
            m = part.shape[0]
            np.add(part, offsets[:m], out=flat[:m])
            counts = np.bincount(flat[:m].ravel(), minlength=m * n).reshape(m, n).astype(np.float64)
            np.matmul(rows, counts.T, out=means[:, start + g0:start + g0 + m])
    means /= n
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha], axis=1)
    return low.reshape(values.shape[:-1]), high.reshape(values.shape[:-1])


@register_ci("t")
def t_ci(values: np.ndarray, confidence: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Student-t interval: mean +- t_{(1+c)/2, n-1} * s / sqrt(n), per row of ``(T, N)`` values."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = values.shape[-1]
    mean = values.mean(axis=-1)
    if n == 1:
        return mean, mean.copy()
    half = stats.t.ppf((1.0 + confidence) / 2.0, n - 1) * values.std(axis=-1, ddof=1) / math.sqrt(n)
    return mean - half, mean + half


# --------------------------------------------------------------------------------------------
# result
# --------------------------------------------------------------------------------------------
@dataclass
class ResidualResult:
    r"""Counts and summaries of a residual-knowledge audit.

    Attributes
    ----------
    taus : ndarray (T,)
    k_unlearned : ndarray (T, N) int
        :math:`k_m`: correct predictions of the unlearned model among the ``samples`` perturbations.
    k_reference : ndarray (T, N) float
        :math:`k_a` (integer counts, tier ``reference``) or :math:`K \bar p_{\text{held-out}}(y)`
        (tier ``heldout``).
    labels : ndarray (N,) int
    tier : {"reference", "heldout"}
    summary : list of dict, one per tau, with ``tau``, ``mean_r_tau``, ``ci_low``, ``ci_high``,
        ``frac_above_1``, ``recognition_unlearned``, ``recognition_reference``.
    """

    taus: np.ndarray
    k_unlearned: np.ndarray
    k_reference: np.ndarray
    labels: np.ndarray
    samples: int
    norm: str
    sampler: str
    tier: str
    confidence: float
    ci_method: str
    summary: list = field(default_factory=list)
    #: ``"grid16-splitmix64"``: the L-inf uniform draws are 16-bit grid midpoints, four per 64-bit
    #: SplitMix64 word (the default); ``"exact"``: ``exact_draws=True``, one ``torch.rand`` float per
    #: value (the stream of earlier releases). ``"grid16"`` in an older ``metrics.json`` names the same
    #: grid drawn from per-sample torch generators (the previous release). The Gaussian and L2 draws
    #: are the same in all. Recorded so an audit can be matched to the code that reproduces it from its
    #: seed (``grid16`` audits: privkit at commit 48df733 or earlier; the bootstrap's resamples changed
    #: with ``grid16-splitmix64`` as well, so confidence bounds of older audits differ by bootstrap noise).
    draws: str = DEFAULT_DRAWS

    @property
    def r_tau(self) -> np.ndarray:
        r"""Smoothed per-sample ratios :math:`(k_m + 1) / (k_a + 1)`, shape (T, N)."""
        return (self.k_unlearned + 1.0) / (self.k_reference + 1.0)

    def _tau_index(self, tau: float | None) -> int:
        if tau is None:
            # default headline: the middle of the grid (the paper's ~0.03 on the CLI's default grid)
            return (len(self.taus) - 1) // 2
        hits = np.flatnonzero(np.isclose(self.taus, float(tau), rtol=1e-6, atol=1e-12))
        if hits.size == 0:
            raise ConfigError(f"headline tau {tau} is not in the audited grid {self.taus.tolist()}; "
                              "pick one of those or add it to --tau")
        return int(hits[0])

    def to_metrics(self, headline_tau: float | None = None) -> dict:
        """Headline keys (``mean_r_tau``, ``ci_low``, ``ci_high``, ``frac_above_1``, the raw rates,
        ``tau``) plus ``tier``, ``norm``, ``sampler``, ``draws``, ``samples``, ``confidence`` and the per-tau table."""
        row = dict(self.summary[self._tau_index(headline_tau)])
        out = {
            "mean_r_tau": row["mean_r_tau"],
            "ci_low": row["ci_low"],
            "ci_high": row["ci_high"],
            "frac_above_1": row["frac_above_1"],
            "recognition_unlearned": row["recognition_unlearned"],
            "recognition_reference": row["recognition_reference"],
            "tau": row["tau"],
            "tier": self.tier,
            "norm": self.norm,
            "sampler": self.sampler,
            "draws": self.draws,
            "samples": self.samples,
            "num_forget": int(self.labels.shape[0]),
            "confidence": self.confidence,
            "ci_method": self.ci_method,
            "per_tau": [dict(r) for r in self.summary],
        }
        return out

    def top_samples(self, n: int = 8, tau: float | None = None) -> np.ndarray:
        """Positions (in the order the forget samples were given) of the ``n`` highest r_tau, descending.

        Ties are broken by the lower reference count, then by position, so the order is stable.
        """
        t = self._tau_index(tau)
        r = self.r_tau[t]
        order = np.lexsort((np.arange(r.size), self.k_reference[t], -r))
        return order[: max(0, int(n))]

    def verdict(self, tau: float | None = None) -> str:
        """One plain-language sentence on the headline tau."""
        row = self.summary[self._tau_index(tau)]
        level = f"{round(100 * self.confidence)}%"
        facts = (f"at tau={row['tau']:g} ({self.norm}, {self.sampler}) mean r_tau = {row['mean_r_tau']:.3f} "
                 f"({level} CI [{row['ci_low']:.3f}, {row['ci_high']:.3f}]), "
                 f"{100 * row['frac_above_1']:.1f}% of forget samples above 1")
        if self.tier == "reference":
            versus = "a model retrained without them"
        else:
            versus = "held-out samples of the same class (weaker held-out tier: no retrained reference was given)"
        if row["ci_low"] > 1.0:
            return (f"Residual knowledge detected: the unlearned model still recognises perturbed forget samples "
                    f"more often than {versus}; {facts}.")
        if row["ci_high"] < 1.0:
            return (f"No residual knowledge at this radius: the unlearned model recognises perturbed forget samples "
                    f"less often than {versus}; {facts}.")
        return (f"No evidence of residual knowledge at this radius: the confidence interval covers 1 when "
                f"compared with {versus}; {facts}.")


# --------------------------------------------------------------------------------------------
# validation and input handling
# --------------------------------------------------------------------------------------------
def _check_config(taus, norm, sampler, samples, confidence, ci_method, clip) -> np.ndarray:
    if np.isscalar(taus):
        taus = [taus]
    taus_arr = np.asarray(list(taus), dtype=np.float64)
    if taus_arr.size == 0:
        raise ConfigError("no tau given; pass at least one radius, e.g. --tau 0.03")
    for t in taus_arr:
        if not np.isfinite(t) or t <= 0:
            raise ConfigError(f"tau={t:g} is not a positive radius; use values > 0 such as 0.01,0.03,0.1")
    if norm not in NORMS:
        raise ConfigError(f"unknown norm {norm!r}; use one of {', '.join(NORMS)}")
    SAMPLERS.lookup(sampler)
    if int(samples) != samples or samples < 1:
        raise ConfigError(f"samples={samples} perturbations per forget sample; use an integer >= 1, e.g. 64")
    if not 0.0 < confidence < 1.0:
        raise ConfigError(f"confidence={confidence} must lie strictly between 0 and 1, e.g. 0.95")
    CI_METHODS.lookup(ci_method)
    if clip is not None and not (len(clip) == 2 and float(clip[0]) < float(clip[1])):
        raise ConfigError(f"clip={clip} must be a (low, high) pair with low < high, or None for no clipping")
    return taus_arr


def _labels_1d(y: torch.Tensor, label_column: int | None) -> torch.Tensor:
    y = torch.as_tensor(y)
    if y.dim() == 2:
        if label_column is not None:
            y = y[:, label_column]
        elif y.shape[1] == 1:
            y = y[:, 0]
        else:
            raise ConfigError(f"labels have {y.shape[1]} columns (one per attribute); pass label_column= "
                              "to pick the attribute the models predict")
    if y.dim() != 1:
        raise ConfigError(f"labels of shape {list(y.shape)} are not one class index per sample")
    return y.long()


def _iter_batches(x, y, label_column):
    """Normalise the inputs to an iterator of ``(x_batch, y_batch)``.

    ``x`` is a tensor ``(N, *input_shape)`` with ``y`` ``(N,)``, or (``y=None``) an iterable of
    ``(x, y)`` pairs or ``(indices, x, y)`` triples such as ``AttributeDataset.batches`` yields.
    """
    if isinstance(x, (torch.Tensor, np.ndarray)):
        if y is None:
            raise ConfigError("x is a tensor but y is missing; pass the forget labels as y")
        yield torch.as_tensor(x, dtype=torch.float32), _labels_1d(y, label_column)
        return
    if y is not None:
        raise ConfigError("y must be None when x is an iterable of (x, y) batches")
    for item in x:
        xb, yb = item[-2], item[-1]
        yield torch.as_tensor(xb, dtype=torch.float32), _labels_1d(yb, label_column)


def _model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


class _EvalMode:
    """Put models in eval mode for the audit and restore their previous modes afterwards."""

    def __init__(self, *models):
        self.models = [m for m in models if m is not None]

    def __enter__(self):
        self.modes = [m.training for m in self.models]
        for m in self.models:
            m.eval()

    def __exit__(self, *exc):
        for m, mode in zip(self.models, self.modes):
            m.train(mode)
        return False


def _accepts_out(fn: Callable) -> bool:
    """Whether a sampler takes an ``out=`` buffer (the built-in uniform and Gaussian samplers do)."""
    try:
        return "out" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


# --------------------------------------------------------------------------------------------
# estimator
# --------------------------------------------------------------------------------------------
def _audit_scratch_bytes(chunk: int, samples: int, xc: torch.Tensor, n_taus: int, n_models: int,
                         perturbed: bool = True) -> int:
    """Bytes an audit's :class:`Workspace` reserves: perturbed inputs (only where the sampler writes
    into a buffer, ``perturbed``), predictions, one kind of unit draws, and the random words of the
    16-bit draws with the mixer's scratch (one block of rows each), for chunks of ``chunk`` forget samples."""
    inputs = chunk * samples
    d = math.prod(xc.shape[1:])
    row_words = -(-samples * d // _LANES_PER_WORD)
    block_words = max(1, min(chunk, _WORD_BLOCK_BYTES // max(1, 8 * row_words))) * row_words
    slots = [inputs * d * xc.element_size() if perturbed else 0, n_taus * n_models * inputs * 8, inputs * d * 4,
             block_words * 8, block_words * 8]
    return sum(-(-n // Workspace.ALIGN) * Workspace.ALIGN for n in slots)


def _neighbourhood_counts(model_for_sampler, models, x, y, taus, norm, sampler, samples, batch_size, seed,
                          clip, label_column, sampler_options, stream_offset=0, exact_draws=False):
    """Counts of correct predictions of each of ``models`` on the same perturbations: list of (T, N).

    Forget samples are processed in chunks of ``max(1, batch_size // samples)`` so one forward pass
    sees at most ``batch_size`` perturbed inputs and memory does not grow with N.
    """
    sampler_fn = SAMPLERS[sampler]
    device = _model_device(model_for_sampler)
    samples = int(samples)
    chunk = max(1, int(batch_size) // samples)
    # One buffer receives every chunk's perturbed inputs at every radius (no fresh allocation per
    # forward pass) when the sampler can write into it; the others return new tensors.
    into_buffer = _accepts_out(sampler_fn)
    workspace = None
    counts = []
    seen = 0
    for xb, yb in _iter_batches(x, y, label_column):
        if xb.shape[0] != yb.shape[0]:
            raise ConfigError(f"a batch has {xb.shape[0]} inputs but {yb.shape[0]} labels; give one label per input")
        for start in range(0, xb.shape[0], chunk):
            xc = xb[start:start + chunk].to(device)
            yc = yb[start:start + chunk].to(device)
            b = xc.shape[0]
            if workspace is None:
                workspace = Workspace(_audit_scratch_bytes(chunk, samples, xc, len(taus), len(models), into_buffer),
                                      device)
            streams = NoiseStreams.for_samples(seed, range(stream_offset + seen, stream_offset + seen + b), device,
                                               exact=exact_draws, workspace=workspace)
            extra = {}
            if into_buffer:
                extra["out"] = workspace.get("perturbed", (b, samples, *xc.shape[1:]), xc.dtype)
            # predicted classes of every radius and model, compared with the labels once per chunk
            pred = workspace.get("predictions", (len(taus), len(models), b * samples), torch.long)
            for t, tau in enumerate(taus):
                x_pert = sampler_fn(xc, yc, tau=float(tau), norm=norm, samples=samples, streams=streams,
                                    clip=clip, model=model_for_sampler, **sampler_options, **extra)
                flat = x_pert.flatten(0, 1)
                with torch.inference_mode():
                    for j, model in enumerate(models):
                        torch.argmax(model(flat), dim=-1, out=pred[t, j])
                del x_pert, flat
            correct = (pred.view(len(taus), len(models), b, samples) == yc.view(1, 1, b, 1)).sum(dim=-1)
            counts.append(correct.cpu().numpy())
            seen += b
    if seen == 0:
        return None
    stacked = np.concatenate(counts, axis=-1)  # (T, M, N)
    return [np.ascontiguousarray(stacked[:, j]) for j in range(len(models))]


def _summarise(taus, k_m, k_a, samples, confidence, ci_method, seed) -> list[dict]:
    r = (k_m + 1.0) / (k_a + 1.0)
    # one seeded generator for all radii: the bootstrap resamples the same forget samples at every tau
    low, high = CI_METHODS[ci_method](r, confidence, np.random.default_rng([int(seed), 0]))
    rows = []
    for t, tau in enumerate(taus):
        rows.append({
            "tau": float(tau),
            "mean_r_tau": float(r[t].mean()),
            "ci_low": float(low[t]),
            "ci_high": float(high[t]),
            "frac_above_1": float((r[t] > 1.0).mean()),
            "recognition_unlearned": float(k_m[t].sum() / (samples * k_m.shape[1])),
            "recognition_reference": float(k_a[t].sum() / (samples * k_a.shape[1])),
        })
    return rows


def residual_knowledge(unlearned: nn.Module, reference: nn.Module | None, x, y=None, taus=(0.01, 0.02, 0.03, 0.05, 0.1),
                       norm: str = "linf", sampler: str = "uniform", samples: int = 64, batch_size: int = 4096,
                       seed: int = 0, clip: tuple[float, float] | None = (0.0, 1.0), confidence: float = 0.95,
                       ci_method: str = "bootstrap", heldout_x=None, heldout_y=None, label_column: int | None = None,
                       sampler_options: dict | None = None, exact_draws: bool = False) -> ResidualResult:
    r"""Estimate residual knowledge :math:`r_\tau` of the forget set for every radius in ``taus``.

    Parameters
    ----------
    unlearned : nn.Module
        :math:`m`, a classifier returning logits ``(B, C)``.
    reference : nn.Module or None
        :math:`a`, retrained without the forget set. ``None`` selects the weaker ``heldout`` tier,
        which needs ``heldout_x``/``heldout_y``.
    x, y :
        Forget samples ``(N, *input_shape)`` and labels ``(N,)``; or ``x`` an iterable of ``(x, y)``
        batches (or ``(indices, x, y)`` triples) with ``y=None``, read once, chunk by chunk.
    taus : float or sequence of float
        Radii :math:`\tau > 0` of the ball :math:`B_p(x, \tau)`.
    norm : {"linf", "l2"}
    sampler : str
        A name in :data:`SAMPLERS`: ``uniform``, ``gaussian`` or ``pgd``.
    samples : int
        :math:`K`, perturbations per forget sample.
    batch_size : int
        Most perturbed inputs per forward pass; ``batch_size // samples`` forget samples per chunk.
    seed : int
        Seeds the perturbations (per sample, see module docstring) and the bootstrap.
    clip : (float, float) or None
        Valid input range; perturbations are clipped into it.
    confidence : float
        Level of the interval on the mean :math:`\hat r_\tau`.
    ci_method : {"bootstrap", "t"}
        Percentile bootstrap over forget samples (2000 resamples, seeded) or Student-t interval.
    heldout_x, heldout_y :
        Held-out samples (never trained on) for the ``heldout`` tier, same forms as ``x``, ``y``;
        every class present in the forget set needs at least one.
    label_column : int, optional
        Column of 2-D label matrices (``AttributeDataset`` attrs) holding the predicted attribute.
    sampler_options : dict, optional
        Extra keyword arguments of the sampler (``steps``, ``step_size`` for ``pgd``).
    exact_draws : bool
        Draw the L-inf unit perturbations as ``torch.rand`` floats (the streams of earlier versions)
        instead of the default 16-bit grid points, which are cheaper to draw (four per 64-bit word of a
        counter-based generator) and uniform to within :math:`2^{-16}` of the radius (see
        :class:`NoiseStreams`).

    Returns
    -------
    ResidualResult
    """
    taus_arr = _check_config(taus, norm, sampler, samples, confidence, ci_method, clip)
    options = dict(sampler_options or {})
    if reference is None and heldout_x is None:
        raise ConfigError("no reference model and no held-out samples; pass --reference RUN (a retrained model) "
                          "or held-out samples for the weaker held-out tier")
    with _EvalMode(unlearned, reference):
        labels = []

        def recording(batches):
            # keep the labels as they stream past so x can be a one-shot iterable
            for xb, yb in batches:
                labels.append(yb.cpu().numpy())
                yield xb, yb

        forget = recording(_iter_batches(x, y, label_column))
        models = [unlearned] if reference is None else [unlearned, reference]
        counts = _neighbourhood_counts(unlearned, models, forget, None, taus_arr, norm, sampler, samples,
                                       batch_size, seed, clip, None, options, exact_draws=exact_draws)
        if counts is None:
            raise ConfigError("the forget set is empty; check the --forget selection matches some samples")
        y_all = np.concatenate(labels)
        k_m = counts[0]
        if reference is not None:
            tier = "reference"
            k_a = counts[1].astype(np.float64)
        else:
            tier = "heldout"
            k_a = _heldout_denominator(unlearned, heldout_x, heldout_y, y_all, taus_arr, norm, sampler, samples,
                                       batch_size, seed, clip, label_column, options, exact_draws)
    summary = _summarise(taus_arr, k_m, k_a, samples, confidence, ci_method, seed)
    return ResidualResult(taus=taus_arr, k_unlearned=k_m, k_reference=k_a, labels=y_all, samples=int(samples),
                          norm=norm, sampler=sampler, tier=tier, confidence=float(confidence), ci_method=ci_method,
                          summary=summary, draws="exact" if exact_draws else DEFAULT_DRAWS)


# held-out neighbourhoods use a separate family of streams so they never share draws with forget samples
_HELDOUT_STREAM_OFFSET = 1 << 40


def _heldout_denominator(model, heldout_x, heldout_y, y_forget, taus, norm, sampler, samples, batch_size, seed,
                         clip, label_column, options, exact_draws=False) -> np.ndarray:
    r""":math:`K \bar p_{\text{held-out}}(y_i)` per forget sample: ``(T, N)`` float."""
    labels = []

    def recording(batches):
        for xb, yb in batches:
            labels.append(yb.cpu().numpy())
            yield xb, yb

    counts = _neighbourhood_counts(model, [model], recording(_iter_batches(heldout_x, heldout_y, label_column)), None,
                                   taus, norm, sampler, samples, batch_size, seed, clip, None, options,
                                   stream_offset=_HELDOUT_STREAM_OFFSET, exact_draws=exact_draws)
    if counts is None:
        raise ConfigError("the held-out set is empty; the held-out tier needs samples the model never trained on")
    k_h = counts[0]
    y_h = np.concatenate(labels)
    num_classes = int(max(y_h.max(), y_forget.max())) + 1
    per_class_n = np.bincount(y_h, minlength=num_classes)
    missing = sorted(set(np.unique(y_forget).tolist()) - set(np.flatnonzero(per_class_n).tolist()))
    if missing:
        raise ConfigError(f"no held-out samples of class(es) {missing}; the held-out tier compares each forget "
                          "sample with held-out samples of its class, so add some or pass --reference")
    rate = np.stack([np.bincount(y_h, weights=k_h[t], minlength=num_classes) for t in range(len(taus))])
    rate = rate / np.maximum(per_class_n, 1) / samples
    return samples * rate[:, y_forget]


def residual_knowledge_loop(unlearned: nn.Module, reference: nn.Module, x: torch.Tensor, y: torch.Tensor, taus,
                            norm: str = "linf", sampler: str = "uniform", samples: int = 64, seed: int = 0,
                            clip: tuple[float, float] | None = (0.0, 1.0), confidence: float = 0.95,
                            ci_method: str = "bootstrap", sampler_options: dict | None = None,
                            exact_draws: bool = False) -> ResidualResult:
    """Plain reference implementation: one forget sample, one tau, one perturbation at a time.

    Draws each sample's perturbations from the same per-sample stream as :func:`residual_knowledge`
    and classifies them one by one, so the two agree exactly; used by the tests.
    """
    taus_arr = _check_config(taus, norm, sampler, samples, confidence, ci_method, clip)
    x = torch.as_tensor(x, dtype=torch.float32)
    y = _labels_1d(y, None)
    if x.shape[0] == 0:
        raise ConfigError("the forget set is empty; check the --forget selection matches some samples")
    k_m = np.zeros((len(taus_arr), x.shape[0]), dtype=np.int64)
    k_a = np.zeros((len(taus_arr), x.shape[0]), dtype=np.float64)
    with _EvalMode(unlearned, reference):
        for i in range(x.shape[0]):
            streams = NoiseStreams.for_samples(seed, [i], exact=exact_draws)
            for t, tau in enumerate(taus_arr):
                pert = SAMPLERS[sampler](x[i:i + 1], y[i:i + 1], tau=float(tau), norm=norm, samples=samples,
                                         streams=streams, clip=clip, model=unlearned, **(sampler_options or {}))[0]
                for k in range(samples):
                    with torch.no_grad():
                        k_m[t, i] += int(unlearned(pert[k:k + 1]).argmax(dim=-1).item() == int(y[i]))
                        k_a[t, i] += int(reference(pert[k:k + 1]).argmax(dim=-1).item() == int(y[i]))
    summary = _summarise(taus_arr, k_m, k_a, samples, confidence, ci_method, seed)
    return ResidualResult(taus=taus_arr, k_unlearned=k_m, k_reference=k_a, labels=y.numpy(), samples=int(samples),
                          norm=norm, sampler=sampler, tier="reference", confidence=float(confidence),
                          ci_method=ci_method, summary=summary, draws="exact" if exact_draws else DEFAULT_DRAWS)
