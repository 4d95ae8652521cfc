"""The epochs of one training run (:class:`TrainingLoop`), which :func:`autosam.training.trainer.run_training`
builds once the run is resolved and the network exists.

Per epoch: ``iterations_per_epoch`` optimiser steps of the method's ``train_step`` (under autocast,
with gradient scaling for fp16, gradient clipping, non-finite losses skipped on every rank), then
the patch validation (pseudo Dice per class, EMA), the scheduler step, the checkpoints
(``checkpoint_best.pth`` on a new best EMA, ``checkpoint_latest.pth``) and ``progress.png``. After the
last epoch: the method's ``after_training`` and ``checkpoint_final.pth``. A time budget
(:mod:`autosam.training.time_budget`) may shorten the run as it goes.
"""
from __future__ import annotations

import logging
import math
import time

import numpy as np
import torch

from autosam.training import checkpoint as ckpt_io
from autosam.training import distributed, rank_sync
from autosam.training.dataloading import make_loader, shutdown_loader
from autosam.training.logger import TrainingHistory
from autosam.training.time_budget import TimeBudget, rebuild_schedule
from autosam.utils import precision

logger = logging.getLogger(__name__)
EMA_MOMENTUM = 0.9  # ema = 0.9 * ema + 0.1 * mean pseudo Dice (nnU-Net)
PROGRESS_EVERY = 10  # iterations between updates of the progress bar's running mean loss
OVERSAMPLE_FOREGROUND = 0.33  # share of foreground-centred samples in a (global) batch (nnU-Net)


class TrainingLoop:
    """The epochs of one training run: optimiser, precision, resume, checkpoints, the time budget,
    per-epoch patch validation and the training history."""

    def __init__(self, method, entry, ctx, network, dataset, train_keys, val_keys, fold_dir, resume, num_workers,
                 progress, info):
        self.method, self.entry, self.ctx, self.network = method, entry, ctx, network
        self.dataset, self.train_keys, self.val_keys = dataset, train_keys, val_keys
        self.fold_dir, self.resume, self.num_workers, self.progress, self.info = fold_dir, resume, num_workers, progress, info
        self.loss_fn = method.build_loss(ctx)
        if isinstance(self.loss_fn, torch.nn.Module):
            self.loss_fn = self.loss_fn.to(ctx.device)
        self.optimizer, self.scheduler = method.configure_optimizers(network, ctx)
        # bf16 where native, else fp16 + GradScaler; under DDP the least capable rank decides for all
        self.amp_dtype = rank_sync.agree_amp_dtype(precision.amp_dtype(ctx.device))
        self.scaler = precision.grad_scaler(self.amp_dtype, ctx.device)
        logger.info("precision: %s on %s", precision.precision_name(self.amp_dtype), ctx.device)
        self.history = TrainingHistory()
        self.best_ema: float | None = None
        self.start_epoch = 0
        if resume:  # before DDP: its construction then shares rank 0's resumed weights, not fresh ones
            self.try_resume()
            rank_sync.check_same_on_every_rank(self.start_epoch, "the epoch to resume from (--c)")
        # under torch.distributed: DDP around a module whose forward is the method's train_step
        # (also for one rank when the process group was started for it: --ddp checks this path on one GPU)
        self.ddp_step = distributed.wrap_train_step(method, network, self.loss_fn, ctx) if distributed.is_initialized() else None

    def autocast(self):
        return precision.autocast(self.ctx.device, self.amp_dtype)

    # ------------------------------------------------------------------ resume / save
    def try_resume(self) -> None:
        for name in ("checkpoint_latest.pth", "checkpoint_final.pth"):
            path = self.fold_dir / name
            if path.is_file():
                break
        else:
            logger.warning("--c: no checkpoint in %s; starting from scratch", self.fold_dir)
            return
        ck = ckpt_io.load_checkpoint(path, map_location="cpu")
        ckpt_io.method_entry_for_checkpoint(ck, path)
        if ck["method"] != self.method.name:
            raise ValueError(f"{path}: checkpoint of method {ck['method']!r}, not {self.method.name!r}")
        ckpt_io.restore_training_state(ck, network=self.network, optimizer=self.optimizer, scheduler=self.scheduler,
                                       grad_scaler=self.scaler, method=self.method)
        self.start_epoch = int(ck["epoch"])
        self.history = TrainingHistory.from_state(ck.get("logger") or {})
        self.history.truncate(self.start_epoch)
        self.best_ema = ck.get("best_ema")
        logger.info("resuming from epoch %d (%d of %d epochs completed, %s)", self.start_epoch, self.start_epoch,
                    self.ctx.num_epochs, path.name)
        planned = int(ck.get("num_epochs") or 0)
        if planned and planned != self.ctx.num_epochs and self.start_epoch < self.ctx.num_epochs:
            # --c with another --epochs: the restored learning rate belongs to the old length (0 at the
            # end of a finished poly schedule); the schedule is rebuilt for the new one, positioned here
            self.optimizer, self.scheduler = rebuild_schedule(self.method, self.network, self.optimizer, self.scheduler,
                                                              self.ctx, self.start_epoch)
            logger.info("the schedule planned for %d epochs now runs over %d", planned, self.ctx.num_epochs)

    disable_checkpointing = False  # --disable_checkpointing: only checkpoint_final.pth is written
    time_budget: TimeBudget | None = None  # --time-budget-minutes
    epochs_trained = 0  # epochs done when training stopped (this run and the runs it resumed)

    def apply_time_budget(self, epochs_done: int, replan: bool = False) -> bool:
        """After ``epochs_done`` epochs: True when the budget is used up (training stops); else
        shorten the run to the epochs that fit and rebuild the schedule for them. Rank 0 decides
        for every rank (their clocks differ)."""
        budget, ctx = self.time_budget, self.ctx
        decision = (budget.exhausted(), budget.fitting_epochs() if (replan or budget.should_replan()) else None)
        if ctx.world_size > 1:
            decision = distributed.broadcast_object(decision if ctx.is_main_process else None)
        exhausted, fitting = decision
        if exhausted:
            budget.stop_reason = f"the budget of {budget.minutes:g} min was used after {epochs_done} epochs"
            if epochs_done < ctx.num_epochs:
                logger.info("time budget: %s; training stops", budget.stop_reason)
            ctx.num_epochs = epochs_done
            return True
        if fitting is not None and fitting < ctx.num_epochs:
            logger.info("time budget: %d of %d epochs fit into %g min (%.1f s per epoch); the schedule follows",
                        fitting, budget.planned_epochs, budget.minutes, budget.mean_epoch())
            ctx.num_epochs = fitting
            self.optimizer, self.scheduler = rebuild_schedule(self.method, self.network, self.optimizer, self.scheduler,
                                                              ctx, epochs_done)
            budget.stop_reason = f"{fitting} epochs fit into the budget"
        return False

    def save(self, name: str, epoch: int) -> None:
        if self.disable_checkpointing and name != "checkpoint_final.pth":
            return
        # rank 0 writes; the others wait outside any collective (a failure stops them at once)
        rank_sync.main_process_phase(f"writing {name}", self._write_checkpoint, name, epoch)

    def _write_checkpoint(self, name: str, epoch: int) -> None:
        ckpt_io.save_checkpoint(
            self.fold_dir / name, method_entry=self.entry, options=self.ctx.options, network=self.network,
            optimizer=self.optimizer, scheduler=self.scheduler, grad_scaler=self.scaler, epoch=epoch,
            num_epochs=self.ctx.num_epochs, history=self.history.state(), best_ema=self.best_ema,
            method_state=self.method.extra_state(), iterations_per_epoch=self.ctx.iterations_per_epoch, **self.info,
        )

    # ------------------------------------------------------------------ loop
    def release(self) -> None:
        """Drop the optimiser, scheduler, scaler, DDP wrapper and gradients (after training)."""
        self.network.zero_grad(set_to_none=True)
        self.optimizer = self.scheduler = self.scaler = self.ddp_step = self.loss_fn = None

    def run(self) -> None:
        ctx = self.ctx
        if self.time_budget is not None and self.start_epoch > 0:  # the epochs of the runs resumed count
            self.time_budget.epoch_times = [t for t in self.history.state().get("epoch_time", [])[:self.start_epoch]
                                            if t is not None]
            self.apply_time_budget(self.start_epoch, replan=True)
        self.epochs_trained = self.start_epoch
        if self.start_epoch >= ctx.num_epochs:
            logger.info("training already complete (%d epochs)", self.start_epoch)
            if self._final_epoch() >= self.start_epoch:  # stopped before checkpoint_latest.pth was removed
                if ctx.is_main_process:
                    (self.fold_dir / "checkpoint_latest.pth").unlink(missing_ok=True)
            else:  # stopped after the last epoch, before the final checkpoint: do what was left
                self.finish()
            return
        train_loader, val_loader = self.make_loaders()
        try:
            epoch = self.start_epoch
            while epoch < ctx.num_epochs:  # a time budget may shorten the run as it goes
                self.run_epoch(epoch, train_loader, val_loader)
                epoch = self.epochs_trained = epoch + 1
                if self.time_budget is not None:
                    self.time_budget.record(self.history.last("epoch_time"))
                    if self.apply_time_budget(epoch):
                        break
        finally:
            for loader in (train_loader, val_loader):
                shutdown_loader(loader)
        self.finish()

    def _final_epoch(self) -> int:
        """The epoch of ``checkpoint_final.pth``, or -1 when there is none."""
        path = self.fold_dir / "checkpoint_final.pth"
        if not path.is_file():
            return -1
        return int(ckpt_io.load_checkpoint(path, map_location="cpu")["epoch"])

    def finish(self) -> None:
        """After the last epoch: the method's ``after_training``, the final (and best) checkpoint."""
        ctx = self.ctx
        self.after_training()
        epochs = max(ctx.num_epochs, self.start_epoch)  # a run resumed with fewer --epochs keeps its count
        self.save("checkpoint_final.pth", epochs)
        if not self.method.per_epoch_metric and not self.disable_checkpointing:
            self.save("checkpoint_best.pth", epochs)
            logger.info("%s has no per-epoch validation metric: checkpoint_best.pth is the final network", self.method.name)
        if ctx.is_main_process:
            (self.fold_dir / "checkpoint_latest.pth").unlink(missing_ok=True)  # the final one supersedes it
        logger.info("training done; best EMA pseudo Dice %.4f", self.best_ema if self.best_ema is not None else math.nan)

    def after_training(self) -> None:
        """The method's ``after_training`` hook, on rank 0 alone; its result (the network's weights
        and buffers, the method state) then reaches the other ranks, which validate with it."""
        ctx = self.ctx
        # the other ranks wait outside any collective: a failure here stops them at once
        rank_sync.main_process_phase("after_training", self.method.after_training, self.network, ctx,
                                     self.dataset.subset(self.train_keys), list(self.train_keys))
        if ctx.world_size > 1:
            distributed.broadcast_module_state(ckpt_io.unwrap(self.network))
            state = distributed.broadcast_object(self.method.extra_state() if ctx.is_main_process else None)
            if not ctx.is_main_process:
                self.method.load_extra_state(state)

    def make_loaders(self):
        ctx, method = self.ctx, self.method
        ds_scales = method.deep_supervision_scales(ctx)
        patch = method.train_patch_size(ctx)
        # the plans' batch is the global one: each rank draws its share, with as many foreground-centred
        # samples as its part of a single-process batch would hold
        global_bs = ctx.configuration.batch_size
        bs, fg = ctx.rank_batch_size, ctx.foreground_fraction(global_bs, OVERSAMPLE_FOREGROUND)
        # a fresh worker seed per (seed, rank, start epoch): ranks draw different samples, and a
        # resumed run does not replay the first batches
        seed = ctx.loader_seed + 7919 * self.start_epoch
        custom = method.make_train_loader(ctx, self.dataset.subset(self.train_keys), list(self.train_keys))
        ignore = ctx.label_manager.ignore_label  # never a foreground-sampling target
        pin = ctx.device.type == "cuda"
        train = iter(custom) if custom is not None else make_loader(
            self.dataset.subset(self.train_keys), bs, patch, ds_scales, train=True,
            num_workers=self.num_workers, seed=seed, ignore_label=ignore, pin_memory=pin, oversample_foreground=fg)
        # validation draws a fifth of the batches: half the workers (nnU-Net), at least one if any
        val = make_loader(self.dataset.subset(self.val_keys), bs, patch, ds_scales, train=False,
                          num_workers=max(1, self.num_workers // 2) if self.num_workers > 0 else 0,
                          seed=ctx.loader_seed + 1, ignore_label=ignore, pin_memory=pin, oversample_foreground=fg)
        return train, val

    def to_device(self, batch: dict) -> dict:
        dev = self.ctx.device
        move = lambda t: t.to(dev, non_blocking=True) if isinstance(t, torch.Tensor) else t  # noqa: E731
        out = dict(batch)
        for key in ("data", "target"):
            if key in out:
                out[key] = [move(t) for t in out[key]] if isinstance(out[key], (list, tuple)) else move(out[key])
        return out

    def train_iteration(self, batch: dict) -> torch.Tensor | None:
        """One optimiser step; returns the detached loss (still on the device: no host sync), or
        ``None`` when the loss was not finite and the step was skipped."""
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            if self.ddp_step is not None:  # DDP: the backward pass averages the gradients over the ranks
                loss = self.ddp_step(self.to_device(batch))[0]
            else:
                loss = self.method.train_step(self.network, self.to_device(batch), self.loss_fn, self.ctx).loss
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        # the one host sync of a step, once the backward pass is queued: a non-finite loss skips the
        # update (on every rank when on one: the ranks' weights must stay equal)
        if not distributed.all_true(torch.isfinite(loss)):
            logger.warning("epoch %d: non-finite loss %s; step skipped", self.ctx.epoch, float(loss))
            self.optimizer.zero_grad(set_to_none=True)
            return None
        clip = getattr(self.ctx.options, "grad_clip", None)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        if clip and clip > 0:
            torch.nn.utils.clip_grad_norm_(self.network.parameters(), clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        return loss.detach()

    @torch.no_grad()
    def validate_patches(self, val_loader) -> tuple[float, list[float]]:
        labels = self.ctx.label_manager  # one pseudo Dice per foreground class or region
        k = len(labels.evaluation_keys)
        # counts and losses stay on the device (one host sync at the end, not one per batch)
        tp, fp, fn = (torch.zeros(k, dtype=torch.int64, device=self.ctx.device) for _ in range(3))
        loss_sum = torch.zeros((), dtype=torch.float32, device=self.ctx.device)
        # nnU-Net: a fifth of the training batches; a method whose validation step costs more may ask fewer
        fraction = getattr(self.method, "per_epoch_validation_fraction", 0.2)  # a method not derived from Method
        n = max(1, math.ceil(round(self.ctx.iterations_per_epoch * fraction, 6)))
        self.network.eval()
        for _ in range(n):
            batch = self.to_device(next(val_loader))
            with self.autocast():
                result = self.method.validation_step(self.network, batch, self.loss_fn, self.ctx)
            loss_sum += result.loss.detach().float()
            if result.output is None:
                continue
            target = batch["target"][0] if isinstance(batch["target"], (list, tuple)) else batch["target"]
            ref = target[:, 0].to(result.output.device)
            pred, refs = labels.predicted_masks(result.output), labels.masks_of(ref)
            valid = labels.valid_mask(ref)  # ignored voxels count nowhere
            if valid is not None:
                pred = pred & valid
            dims = tuple(range(1, pred.ndim))
            tp += (pred & refs).sum(dims)
            fp += (pred & ~refs).sum(dims)
            fn += (~pred & refs).sum(dims)
        self.network.train()
        if self.ctx.world_size > 1:  # every rank scores the same pseudo Dice: the same best checkpoint
            counts = distributed.all_reduce_sum(torch.stack([tp, fp, fn]))
            tp, fp, fn = counts[0], counts[1], counts[2]
            loss_sum = distributed.all_reduce_mean(loss_sum)
        tp, fp, fn = (t.cpu().double() for t in (tp, fp, fn))
        denom = 2 * tp + fp + fn
        dice = [float(2 * t / d) if d > 0 else math.nan for t, d in zip(tp, denom)]
        return float(loss_sum) / n, dice

    def run_epoch(self, epoch: int, train_loader, val_loader) -> None:
        ctx = self.ctx
        ctx.epoch = epoch
        start = time.time()
        lr = self.optimizer.param_groups[0]["lr"]
        self.network.train()
        bar = None
        if self.progress:
            from autosam.utils.progress import progress_bar

            bar = progress_bar(total=ctx.iterations_per_epoch, desc=f"epoch {epoch + 1}/{ctx.num_epochs}", unit="it", leave=False)
        loss_sum = torch.zeros((), dtype=torch.float32, device=ctx.device)  # on the device: no sync per step
        steps = 0
        for i in range(ctx.iterations_per_epoch):
            value = self.train_iteration(next(train_loader))
            if value is not None:
                loss_sum += value.float()
                steps += 1
            if bar is not None:
                bar.update(1)
                if (i + 1) % PROGRESS_EVERY == 0 or i + 1 == ctx.iterations_per_epoch:  # a host sync: not every step
                    bar.set_postfix(loss=f"{float(loss_sum) / steps:.4f}" if steps else "nan")
        if bar is not None:
            bar.close()
        if ctx.world_size > 1:  # the loss of the global batch: the mean over the ranks' steps
            totals = distributed.all_reduce_sum(torch.stack([loss_sum, torch.tensor(float(steps), device=ctx.device)]))
            loss_sum, steps = totals[0], int(totals[1])
        val_loss, dice = self.validate_patches(val_loader)
        if self.scheduler is not None:
            self.scheduler.step()
        valid = [d for d in dice if not math.isnan(d)]
        mean_dice = float(np.mean(valid)) if valid else 0.0
        ema = mean_dice if self.history.last("ema_pseudo_dice") is None else (
            EMA_MOMENTUM * self.history.last("ema_pseudo_dice") + (1 - EMA_MOMENTUM) * mean_dice)
        train_loss = float(loss_sum) / steps if steps else math.nan
        seconds = time.time() - start
        self.history.log(epoch, train_loss=train_loss, val_loss=val_loss, pseudo_dice=dice, ema_pseudo_dice=ema,
                         lr=lr, epoch_time=seconds)
        if self.method.per_epoch_metric:
            logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, pseudo Dice %s, EMA %.4f, lr %.3g, %.1f s",
                        epoch + 1, ctx.num_epochs, train_loss, val_loss, [round(d, 4) for d in dice], ema, lr, seconds)
        else:  # no patch segmentation to score: no pseudo Dice in the log or the plot
            logger.info("epoch %d/%d: train loss %.4f, val loss %.4f, lr %.3g, %.1f s", epoch + 1, ctx.num_epochs,
                        train_loss, val_loss, lr, seconds)
        if self.method.per_epoch_metric and (self.best_ema is None or ema > self.best_ema):
            self.best_ema = ema
            self.save("checkpoint_best.pth", epoch + 1)
            logger.info("new best EMA pseudo Dice %.4f", ema)
        self.save("checkpoint_latest.pth", epoch + 1)
        self.method.on_epoch_end(self.network, ctx, dict(train_loss=train_loss, val_loss=val_loss, pseudo_dice=dice,
                                                         ema_pseudo_dice=ema, lr=lr, epoch_time=seconds))
        if not ctx.is_main_process:
            return
        try:
            names = ctx.label_manager.output_names
            self.history.plot(self.fold_dir / "progress.png", names, pseudo_dice=self.method.per_epoch_metric)
        except Exception as exc:  # a plotting problem must not stop training
            logger.warning("progress.png not written: %s", exc)


__all__ = ["TrainingLoop", "OVERSAMPLE_FOREGROUND", "EMA_MOMENTUM"]
