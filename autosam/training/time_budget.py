"""A wall-clock budget for training (``autosam_train ... --time-budget-minutes N``).

nnU-Net trains a fixed number of epochs; its users ask for a time limit instead (MIC-DKFZ/nnUNet
#2375, #2943), and comparing methods at equal time needs one. The rules:

- the budget counts the training epochs (training iterations and the per-epoch validation), from
  the first epoch of the run; a resumed run (``--c``) counts the epochs it already did
  (``epoch_time`` in the checkpoint's history). The final validation comes after it, as usual;
- after each of the first :data:`REPLAN_EPOCHS` epochs the number of epochs that fit is estimated
  from the mean duration of the epochs so far (the first epoch alone when it is the only one;
  it is dropped from the mean once later ones exist, since it carries start-up costs);
  when fewer than the planned ``--epochs`` fit, the run is shortened to that many and the method's
  optimiser and learning-rate schedule are rebuilt for the new length
  (:func:`rebuild_schedule`), so that ``--epochs 1000 --time-budget-minutes 15`` trains a whole
  poly schedule in 15 minutes instead of its first 2 %;
- whatever the estimate, training stops at the end of the epoch in which the budget runs out,
  then writes the final checkpoint and validates.

The fold's ``metadata.json`` and the log record the budget, the epochs and iterations done and why
training stopped (:meth:`TimeBudget.summary`).
"""
from __future__ import annotations

import logging
import math
import warnings

import torch

logger = logging.getLogger(__name__)

#: Epochs after which the number of epochs that fit is estimated again.
REPLAN_EPOCHS = 3


class TimeBudget:
    """Tracks the epochs of one training run against a budget of ``minutes``."""

    def __init__(self, minutes: float, planned_epochs: int, epoch_times: list[float] | None = None):
        if not (isinstance(minutes, (int, float)) and math.isfinite(minutes) and minutes > 0):
            raise ValueError(f"--time-budget-minutes must be a positive number of minutes, got {minutes!r}")
        self.minutes = float(minutes)
        self.planned_epochs = int(planned_epochs)
        self.epoch_times = [float(t) for t in (epoch_times or []) if t is not None and math.isfinite(float(t))]
        self.stop_reason = ""

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0

    @property
    def used(self) -> float:
        return float(sum(self.epoch_times))

    def record(self, seconds: float) -> None:
        self.epoch_times.append(float(seconds))

    def exhausted(self) -> bool:
        """True once the epochs done have used the budget."""
        return self.used >= self.seconds

    def mean_epoch(self) -> float:
        times = self.epoch_times[1:] if len(self.epoch_times) > 1 else self.epoch_times
        return sum(times) / len(times) if times else math.inf

    def fitting_epochs(self) -> int:
        """Epochs (done and to come) that fit into the budget, at least those done and at least 1,
        at most the planned number."""
        done = len(self.epoch_times)
        mean = self.mean_epoch()
        more = 0 if not math.isfinite(mean) or mean <= 0 else int(max(0.0, self.seconds - self.used) // mean)
        return max(1, done, min(self.planned_epochs, done + more))

    def should_replan(self) -> bool:
        return 1 <= len(self.epoch_times) <= REPLAN_EPOCHS

    def summary(self, epochs_done: int, iterations_per_epoch: int) -> dict:
        return {"minutes": self.minutes, "planned_epochs": self.planned_epochs, "epochs_done": int(epochs_done),
                "iterations_done": int(epochs_done) * int(iterations_per_epoch),
                "seconds_used": round(self.used, 1), "stop_reason": self.stop_reason}


def rebuild_schedule(method, network, optimizer, scheduler, ctx, epochs_done: int):
    """The method's optimiser and schedule for ``ctx.num_epochs`` (already shortened), positioned
    after ``epochs_done`` epochs. The optimiser's state (momentum, Adam moments) carries over when
    the optimiser stays of the same kind (``unet``'s ``optimizer=auto`` may switch from SGD to AdamW
    for a short run); its learning rates are the new schedule's."""
    new_optimizer, new_scheduler = method.configure_optimizers(network, ctx)
    with warnings.catch_warnings():  # "scheduler.step() before optimizer.step()": intended, positioning only
        warnings.filterwarnings("ignore", message=".*lr_scheduler.step.*")
        for _ in range(epochs_done):  # sequential steps: right for chainable and closed-form schedulers alike
            new_scheduler.step()
    old, new = optimizer.state_dict(), new_optimizer.state_dict()
    same_kind = type(optimizer) is type(new_optimizer) and len(old["param_groups"]) == len(new["param_groups"]) and all(
        len(a["params"]) == len(b["params"]) for a, b in zip(old["param_groups"], new["param_groups"]))
    if same_kind:
        new["state"] = old["state"]
        new_optimizer.load_state_dict(new)
    else:
        logger.info("time budget: the optimiser changes from %s to %s for the shorter run; its state starts afresh",
                    type(optimizer).__name__, type(new_optimizer).__name__)
    return new_optimizer, new_scheduler


def current_lrs(optimizer: torch.optim.Optimizer) -> list[float]:
    return [float(g["lr"]) for g in optimizer.param_groups]
