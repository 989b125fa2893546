"""The one training loop every privkit module uses.

A module describes *what* one optimisation step does in a :class:`TrainTask` (its networks, its
optimizers and its ``step``); :func:`run_training` does the rest, the same way for everyone:

- deterministic data order per ``(seed, epoch)``, so a run is reproducible and a resumed run
  replays exactly the batches the interrupted one would have seen;
- a progress bar (rank 0 only);
- a checkpoint at the end of every epoch (and every ``checkpoint_every`` steps), holding every
  network, every optimizer and the RNG state, written as safetensors + JSON (never pickle);
- ``resume=True`` continues from the last checkpoint and ends with *exactly* the weights of an
  uninterrupted run; Ctrl-C (SIGINT) writes a checkpoint at the current step and exits cleanly;
- under ``torchrun`` the networks are wrapped in DistributedDataParallel and each rank takes an
  equal slice of every global batch, so N processes compute the same mean gradient as one.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import nn

from privkit.distributed import DistInfo, barrier, init_distributed
from privkit.errors import ArtifactError, ConfigError
from privkit.io.atomic import atomic_write_bytes, atomic_write_json


class TrainingInterrupted(Exception):
    """Raised after Ctrl-C once a checkpoint has been written; carries its folder."""

    def __init__(self, checkpoint_dir: Path, epoch: int, step: int):
        super().__init__(f"interrupted at epoch {epoch + 1}, step {step}; checkpoint saved in {checkpoint_dir}")
        self.checkpoint_dir = checkpoint_dir


@dataclass
class LoopConfig:
    """Options of the shared loop (not of the model): epochs, global batch size, seed, checkpoints."""

    epochs: int = 10
    batch_size: int = 64
    seed: int = 0
    drop_last: bool = False
    checkpoint_every: int | None = None  # also checkpoint every N steps (besides every epoch)
    num_workers: int = 0
    progress: bool = True
    description: str = "training"

    def validate(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"--epochs {self.epochs} must be at least 1")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size} must be at least 1")
        if self.checkpoint_every is not None and self.checkpoint_every < 1:
            raise ConfigError(f"checkpoint_every {self.checkpoint_every} must be at least 1")


class TrainTask:
    """What one step of training does. Subclass and fill in ``nets``, ``optimizers`` and ``step``.

    ``nets`` maps names to modules; the loop wraps trainable ones in DDP under ``torchrun`` (so
    always reach them through ``self.nets[name]``) and saves all of them in checkpoints. Set
    ``batch_source`` to feed batches yourself (Opacus's Poisson loader does).
    """

    nets: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    batch_source: Callable[[int], Iterable] | None = None

    def step(self, batch: Any, epoch: int, step: int) -> dict[str, float]:  # pragma: no cover - abstract
        raise NotImplementedError

    def end_epoch(self, epoch: int) -> dict[str, float]:
        return {}

    def extra_state(self) -> dict[str, Any]:
        """JSON-safe state to checkpoint besides networks and optimizers (e.g. DP accountant)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass


def unwrap(module: nn.Module) -> nn.Module:
    """The user's module inside DDP / Opacus wrappers."""
    while hasattr(module, "module") and isinstance(getattr(module, "module"), nn.Module):
        module = module.module
    if hasattr(module, "_module") and isinstance(getattr(module, "_module"), nn.Module):
        return unwrap(module._module)
    return module


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int, dist: DistInfo, drop_last: bool = False,
                  shuffle: bool = True) -> list[list[int]]:
    """Index lists for one epoch: a permutation fixed by ``(seed, epoch)``, cut into global batches,
    of which this rank takes its equal contiguous slice."""
    if shuffle:
        g = torch.Generator().manual_seed(int(seed) * 1_000_003 + int(epoch))
        order = torch.randperm(n, generator=g).tolist()
    else:
        order = list(range(n))
    batches = []
    for start in range(0, n, batch_size):
        b = order[start:start + batch_size]
        if len(b) < batch_size and drop_last and start > 0:
            break
        if dist.world_size > 1:
            per = len(b) // dist.world_size
            if per == 0:
                continue
            b = b[dist.rank * per:(dist.rank + 1) * per]
        batches.append(b)
    return batches


# -- checkpoints ---------------------------------------------------------------------------------

def _flatten_optimizer(prefix: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    sd = opt.state_dict()
    scalars: dict[str, Any] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{prefix}.state.{pid}.{k}"] = v.detach().cpu().clone()
            else:
                scalars[f"{pid}.{k}"] = v
    meta[prefix] = {"param_groups": sd["param_groups"], "scalars": scalars}


def _unflatten_optimizer(prefix: str, tensors: dict, meta: dict) -> dict:
    state: dict[int, dict] = {}
    head = f"{prefix}.state."
    for name, t in tensors.items():
        if name.startswith(head):
            pid, key = name[len(head):].split(".", 1)
            state.setdefault(int(pid), {})[key] = t
    for name, v in meta[prefix]["scalars"].items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    return {"state": state, "param_groups": meta[prefix]["param_groups"]}


def save_checkpoint(folder: Path, task: TrainTask, epoch: int, step: int, history: list) -> None:
    """Write ``ckpt-<n>.safetensors`` + ``ckpt-<n>.json``, then point ``latest.json`` at them.

    The pointer is replaced atomically after both files are complete, so a kill at any moment
    leaves the previous checkpoint usable.
    """
    from safetensors.torch import save as st_save

    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    meta: dict[str, Any] = {"epoch": epoch, "step": step, "history": history}
    for name, net in task.nets.items():
        for k, v in unwrap(net).state_dict().items():
            tensors[f"net.{name}.{k}"] = v.detach().cpu().clone().contiguous()
    for name, opt in task.optimizers.items():
        _flatten_optimizer(f"opt.{name}", opt, tensors, meta)
    tensors["rng.torch"] = torch.get_rng_state()
    meta["rng_numpy"] = [int(x) for x in np.random.get_state()[1]]
    meta["rng_numpy_pos"] = int(np.random.get_state()[2])
    meta["extra"] = task.extra_state()
    tag = f"ckpt-{epoch:04d}-{step:08d}"
    blob = st_save({k: v.contiguous() for k, v in tensors.items()})
    atomic_write_bytes(folder / f"{tag}.safetensors", blob)
    meta["sha256"] = hashlib.sha256(blob).hexdigest()
    atomic_write_json(folder / f"{tag}.json", meta)
    atomic_write_json(folder / "latest.json", {"tag": tag})
    for old in folder.glob("ckpt-*"):
        if not old.name.startswith(tag):
            old.unlink(missing_ok=True)


def load_checkpoint(folder: Path, task: TrainTask) -> tuple[int, int, list] | None:
    """Restore ``task`` from the latest checkpoint in ``folder``; ``None`` if there is none."""
    from safetensors.torch import load as st_load

    from privkit.io.artifacts import verify_safetensors_file

    pointer = folder / "latest.json"
    if not pointer.exists():
        return None
    try:
        tag = json.loads(pointer.read_text())["tag"]
        meta = json.loads((folder / f"{tag}.json").read_text())
    except (OSError, ValueError, KeyError):
        raise ArtifactError(f"checkpoint in {folder} is unreadable; delete {folder} to start over") from None
    verify_safetensors_file(folder / f"{tag}.safetensors")
    blob = (folder / f"{tag}.safetensors").read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("sha256"):
        raise ArtifactError(f"checkpoint {tag} in {folder} fails its checksum; delete {folder} to start over")
    tensors = st_load(blob)
    for name, net in task.nets.items():
        head = f"net.{name}."
        sd = {k[len(head):]: v for k, v in tensors.items() if k.startswith(head)}
        unwrap(net).load_state_dict(sd)
    for name, opt in task.optimizers.items():
        opt.load_state_dict(_unflatten_optimizer(f"opt.{name}", tensors, meta))
    torch.set_rng_state(tensors["rng.torch"])
    np.random.set_state(("MT19937", np.array(meta["rng_numpy"], dtype=np.uint32), meta["rng_numpy_pos"], 0, 0.0))
    task.load_extra_state(meta.get("extra", {}))
    return int(meta["epoch"]), int(meta["step"]), list(meta.get("history", []))


# -- the loop ------------------------------------------------------------------------------------

def _wrap_ddp(task: TrainTask, dist: DistInfo) -> None:
    if not dist.enabled:
        return
    from torch.nn.parallel import DistributedDataParallel as DDP

    for name, net in list(task.nets.items()):
        if isinstance(net, DDP) or not any(p.requires_grad for p in net.parameters()):
            continue
        device_ids = [dist.local_rank] if next(net.parameters()).is_cuda else None
        task.nets[name] = DDP(net, device_ids=device_ids)


def _progress(enabled: bool, description: str):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TextColumn("{task.fields[info]}"), TimeRemainingColumn(), disable=not enabled, transient=False)


def run_training(task: TrainTask, dataset: torch.utils.data.Dataset | None, config: LoopConfig,
                 checkpoint_dir: str | os.PathLike | None = None, resume: bool = False,
                 collate: Callable | None = None) -> list[dict]:
    """Train ``task`` on ``dataset`` for ``config.epochs`` epochs; return the per-epoch history.

    Parameters
    ----------
    task : TrainTask
    dataset : Dataset or None
        Indexed by the loop's deterministic batches. ``None`` when ``task.batch_source`` feeds
        batches itself.
    config : LoopConfig
    checkpoint_dir : path, optional
        Where checkpoints go (rank 0 writes). Needed for ``resume`` and Ctrl-C safety.
    resume : bool
        Continue from the latest checkpoint in ``checkpoint_dir`` if there is one.

    Raises
    ------
    TrainingInterrupted
        After Ctrl-C, once a checkpoint of the current step is on disk.
    """
    config.validate()
    dist = init_distributed()
    seed_everything(config.seed)
    start_epoch, start_step, history = 0, 0, []
    ckpt = Path(checkpoint_dir) if checkpoint_dir is not None else None
    if resume and ckpt is not None:
        restored = load_checkpoint(ckpt, task)
        if restored is not None:
            start_epoch, start_step, history = restored
    _wrap_ddp(task, dist)

    def write_checkpoint(epoch: int, step: int) -> None:
        if ckpt is not None and dist.is_main:
            save_checkpoint(ckpt, task, epoch, step, history)

    with _progress(config.progress and dist.is_main, config.description) as bar:
        for epoch in range(start_epoch, config.epochs):
            first = start_step if epoch == start_epoch else 0
            if task.batch_source is not None:
                batches: Iterator = iter(task.batch_source(epoch))
                total = None
            else:
                index_batches = epoch_batches(len(dataset), config.batch_size, config.seed, epoch, dist, config.drop_last)
                total = len(index_batches)
                # a private generator: creating the loader must not draw from the global RNG, or a
                # resumed run would diverge from an uninterrupted one; ``first`` skips applied batches
                loader = torch.utils.data.DataLoader(dataset, batch_sampler=index_batches[first:],
                                                     num_workers=config.num_workers, collate_fn=collate,
                                                     generator=torch.Generator().manual_seed(config.seed + epoch))
                batches = iter(loader)
            bar_task = bar.add_task(f"{config.description} {epoch + 1}/{config.epochs}", total=total, completed=first, info="")
            sums: dict[str, float] = {}
            count = 0
            t0 = time.perf_counter()
            step = first
            skipped = 0
            with _StopOnSigint() as stop:
                for batch in batches:
                    if task.batch_source is not None and skipped < first:
                        skipped += 1  # a task-fed source cannot be sliced: drop what was applied
                        continue
                    stats = task.step(batch, epoch, step)
                    step += 1
                    for k, v in stats.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                    bar.update(bar_task, advance=1, info=" ".join(f"{k}={v:.3g}" for k, v in stats.items()))
                    if stop.requested:
                        if ckpt is None:  # nothing to resume from: a plain interruption
                            raise KeyboardInterrupt
                        # every applied step is in the checkpoint; the run continues from here
                        write_checkpoint(epoch, step)
                        raise TrainingInterrupted(ckpt, epoch, step)
                    if config.checkpoint_every and step % config.checkpoint_every == 0:
                        write_checkpoint(epoch, step)
            record = {"epoch": epoch + 1, "seconds": time.perf_counter() - t0}
            record.update({k: v / max(1, count) for k, v in sums.items()})
            record.update(task.end_epoch(epoch))
            history.append(record)
            write_checkpoint(epoch + 1, 0)
            barrier()
    for name, net in list(task.nets.items()):
        task.nets[name] = unwrap(net) if not _is_opacus(net) else net
    return history


class _StopOnSigint:
    """Turn the first Ctrl-C into a flag checked between steps (so no step is half-applied);
    a second Ctrl-C interrupts at once, leaving the previous checkpoint intact."""

    def __init__(self):
        self.requested = False
        self._previous = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> "_StopOnSigint":
        import signal
        import threading

        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc) -> bool:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False


def _is_opacus(net: nn.Module) -> bool:
    return type(net).__name__ == "GradSampleModule"


# -- the classifier task (used by `privkit train` and every retrain) --------------------------------

@dataclass
class ClassifierConfig:
    """Optimisation recipe for a classifier; recorded in ``meta.json`` so retraining can reuse it."""

    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: str = "adam"
    momentum: float = 0.9
    anchor_penalty: float = 0.0  # lambda/2 ||w - w0||^2 towards the starting weights (NTK-consistent fine-tuning)
    trainable: Sequence[str] | None = None  # parameter names to train (PEFT); None = all
    label_smoothing: float = 0.0
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        import math

        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ConfigError(f"--lr {self.lr} must be a positive number, e.g. 1e-3")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise ConfigError(f"--weight-decay {self.weight_decay} must be zero or positive")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trainable"] = list(self.trainable) if self.trainable is not None else None
        return d


def make_optimizer(params: Iterable[nn.Parameter], cfg: ClassifierConfig) -> torch.optim.Optimizer:
    params = list(params)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum)
    raise ConfigError(f"unknown optimizer {cfg.optimizer!r}; use adam or sgd")


class ClassifierTask(TrainTask):
    """Cross-entropy on one attribute, optional penalty ``(lambda/2)||w - w0||^2`` toward the start.

    With ``anchor_penalty = weight_decay`` style regularisation toward the pretrained weights, the
    fine-tuned model matches the NTK closed form's objective (Golatkar et al., 2020).
    """

    #: ``False`` keeps the network in eval mode while training (frozen BatchNorm statistics, for PEFT)
    train_mode: bool = True

    def __init__(self, model: nn.Module, target_index: int, cfg: ClassifierConfig, optimizer: torch.optim.Optimizer | None = None):
        cfg.validate()
        self.cfg = cfg
        self.target_index = target_index
        names = set(cfg.trainable) if cfg.trainable is not None else None
        for name, p in model.named_parameters():
            p.requires_grad_(names is None or name in names)
        trainable = [p for p in model.parameters() if p.requires_grad]
        if not trainable:
            raise ConfigError("no trainable parameters selected; check --peft for this model")
        self.anchor = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad} if cfg.anchor_penalty else {}
        self.nets = {"model": model}
        self.optimizers = {"model": optimizer or make_optimizer(trainable, cfg)}

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = nn.functional.cross_entropy(logits, y, label_smoothing=self.cfg.label_smoothing)
        if self.cfg.weight_decay and not self.anchor:
            loss = loss + 0.5 * self.cfg.weight_decay * sum((p ** 2).sum() for p in self.nets["model"].parameters() if p.requires_grad)
        if self.anchor:
            model = unwrap(self.nets["model"])
            penalty = sum(((p - self.anchor[n]) ** 2).sum() for n, p in model.named_parameters() if n in self.anchor)
            loss = loss + 0.5 * self.cfg.anchor_penalty * penalty
        return loss

    def step(self, batch, epoch: int, step: int) -> dict[str, float]:
        x, attrs = batch
        y = attrs[:, self.target_index] if attrs.dim() == 2 else attrs
        model = self.nets["model"]
        model.train(self.train_mode)
        opt = self.optimizers["model"]
        opt.zero_grad(set_to_none=True)
        logits = model(x)
        loss = self.loss(logits, y)
        loss.backward()
        opt.step()
        acc = (logits.argmax(1) == y).float().mean()
        return {"loss": float(loss.detach()), "acc": float(acc)}


@torch.no_grad()
def predict_logits(model: nn.Module, data, batch_size: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and attribute labels of every sample, streamed in batches (eval mode)."""
    model.eval()
    outs, labels = [], []
    for _, x, a in data.batches(batch_size):
        outs.append(model(x))
        labels.append(a)
    return torch.cat(outs), torch.cat(labels)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset, batch_size: int = 256) -> bool:
    """Recompute BatchNorm running statistics of the final weights over ``dataset``.

    During training the running averages (momentum 0.1) mix statistics of *earlier* weights; on
    small datasets (a few dozen steps) they lag so far behind that eval-mode predictions collapse
    while train-mode ones are right. One pass with cumulative averaging (``momentum=None``) over
    the training data gives the exact population statistics of the final network. Only the BN
    layers switch to train mode, so dropout stays off. Returns whether anything was recalibrated.
    """
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    if not bns:
        return False
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    for _, x, _ in dataset.batches(batch_size):
        model(x)
    for m, momentum in zip(bns, momenta):
        m.momentum = momentum
    model.eval()
    return True


def train_classifier(model: nn.Module, dataset, target: str, cfg: ClassifierConfig, loop: LoopConfig,
                     checkpoint_dir: str | os.PathLike | None = None, resume: bool = False) -> tuple[nn.Module, list[dict]]:
    """Train ``model`` to predict attribute ``target`` of ``dataset`` with the shared loop, then
    recalibrate its BatchNorm statistics on the training data (see :func:`recalibrate_batchnorm`)."""
    task = ClassifierTask(model, dataset.schema.index(target), cfg)
    history = run_training(task, dataset, loop, checkpoint_dir=checkpoint_dir, resume=resume)
    model = unwrap(task.nets["model"])
    if cfg.trainable is None:  # PEFT runs keep the pretrained statistics frozen on purpose
        recalibrate_batchnorm(model, dataset)
    return model, history
