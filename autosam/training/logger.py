"""Per-epoch training history and ``progress.png``."""
from __future__ import annotations

import math
from pathlib import Path

from autosam.utils.files import atomic_path

KEYS = ("train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "epoch_time")


class TrainingHistory:
    """Lists of per-epoch values: ``train_loss``, ``val_loss``, ``pseudo_dice`` (list per class),
    ``ema_pseudo_dice`` (exponential moving average of the mean pseudo Dice, as nnU-Net), ``lr``,
    ``epoch_time`` (seconds). ``state()`` / ``from_state()`` round-trip through checkpoints."""

    def __init__(self, state: dict | None = None):
        self.values: dict[str, list] = {k: [] for k in KEYS}
        for k, v in (state or {}).items():
            self.values[k] = list(v)

    def log(self, epoch: int, **values) -> None:
        """Record the values of ``epoch`` (0-based); re-logging an epoch replaces it."""
        for key, value in values.items():
            seq = self.values.setdefault(key, [])
            del seq[epoch:]
            while len(seq) < epoch:
                seq.append(None)
            seq.append(value)

    def truncate(self, num_epochs: int) -> None:
        for seq in self.values.values():
            del seq[num_epochs:]

    def last(self, key: str, default=None):
        seq = self.values.get(key) or []
        return seq[-1] if seq else default

    def state(self) -> dict:
        return {k: list(v) for k, v in self.values.items()}

    @classmethod
    def from_state(cls, state: dict) -> "TrainingHistory":
        return cls(state)

    def plot(self, path: Path, class_names: list[str] | None = None, pseudo_dice: bool = True) -> None:
        """Write ``progress.png`` (atomically): losses and pseudo Dice (unless ``pseudo_dice`` is
        False: a method without a patch metric); epoch time; learning rate."""
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        v = self.values
        n = len(v["train_loss"])
        if n == 0:
            return
        epochs = list(range(n))
        fig, axes = plt.subplots(3, 1, figsize=(10, 12))
        ax = axes[0]
        ax.plot(epochs, _clean(v["train_loss"], n), color="b", label="train loss")
        ax.plot(epochs, _clean(v["val_loss"], n), color="r", label="val loss")
        ax.set_xlabel("epoch")
        ax.set_ylabel("loss")
        ax.legend(loc="upper left")
        if pseudo_dice:
            ax2 = ax.twinx()
            dice = _clean(v.get("pseudo_dice", []), n, per_class=True)
            if dice and dice[0] is not None:
                for c in range(len(dice[0])):
                    name = class_names[c] if class_names and c < len(class_names) else f"class {c + 1}"
                    ax2.plot(epochs, [d[c] if d else math.nan for d in dice], ls=":", label=f"pseudo Dice {name}")
            ax2.plot(epochs, _clean(v["ema_pseudo_dice"], n), color="g", ls="--", label="pseudo Dice (EMA)")
            ax2.set_ylabel("pseudo Dice")
            ax2.set_ylim(0, 1)
            ax2.legend(loc="upper right")
        else:
            ax.set_title("no per-epoch patch metric for this method: see validation/summary.json after training")
        axes[1].plot(epochs, _clean(v["epoch_time"], n), color="b")
        axes[1].set_ylabel("epoch time [s]")
        axes[2].plot(epochs, _clean(v["lr"], n), color="b")
        axes[2].set_ylabel("learning rate")
        for a in axes[1:]:
            a.set_xlabel("epoch")
        fig.tight_layout()
        with atomic_path(path, ".png") as tmp:
            fig.savefig(tmp)
        plt.close(fig)


def _clean(seq, n, per_class=False):
    seq = list(seq)[:n] + [None] * max(0, n - len(seq))
    if per_class:
        return seq
    return [math.nan if x is None else x for x in seq]
