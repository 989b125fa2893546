"""``privkit train --peft bn|prompt``: the parameter-efficient training path (see :mod:`privkit.unlearn.peft`).

Called by ``privkit train`` (``cli/commands_train.py``) when ``--peft`` is given; registers no
command of its own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional


def train_peft(ds, data_spec: str, target: str, out: Path, model: Optional[str], peft: str, epochs: int,
               batch_size: int, lr: float, weight_decay: float, seed: int, data_seed: int, size: Optional[int],
               resume: bool, overwrite: bool, keep_replay_state: Optional[bool] = None) -> Path:
    """Pretrain on half of the training split, then fine-tune only the PEFT parameters toward w0."""
    from privkit.unlearn.peft import train_peft_run

    return train_peft_run(ds, data_spec, target, out, model_name=model, peft=peft, epochs=epochs,
                          batch_size=batch_size, lr=lr, weight_decay=weight_decay, seed=seed, data_seed=data_seed,
                          size=size, resume=resume, overwrite=overwrite, keep_replay_state=keep_replay_state)
