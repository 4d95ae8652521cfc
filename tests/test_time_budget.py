"""--time-budget-minutes: how many epochs fit, the schedule that follows the budget, stopping in time."""
from __future__ import annotations

import math

import pytest
import torch

from autosam.plugins import get_plugin_system
from autosam.training.method import MethodContext
from autosam.training.time_budget import TimeBudget, rebuild_schedule
from training_data import tiny_plans


def test_epochs_that_fit_follow_the_measured_epochs():
    budget = TimeBudget(10, planned_epochs=1000)
    assert budget.fitting_epochs() == 1  # nothing measured yet
    budget.record(90.0)  # the first epoch carries start-up costs...
    assert budget.fitting_epochs() == 6  # 1 done + (600 - 90) // 90
    budget.record(30.0)  # ...and is left out of the mean once later epochs exist
    assert budget.mean_epoch() == pytest.approx(30.0)
    assert budget.fitting_epochs() == 2 + int((600 - 120) // 30)
    assert not budget.exhausted()
    small = TimeBudget(10, planned_epochs=5, epoch_times=[10.0, 10.0])
    assert small.fitting_epochs() == 5  # never more than planned
    over = TimeBudget(1, planned_epochs=50, epoch_times=[40.0, 40.0])
    assert over.exhausted() and over.fitting_epochs() == 2  # at least the epochs done
    summary = over.summary(epochs_done=2, iterations_per_epoch=25)
    assert summary["iterations_done"] == 50 and summary["minutes"] == 1.0 and summary["planned_epochs"] == 50
    for bad in (0, -3, math.nan, math.inf, "15"):
        with pytest.raises(ValueError, match="time-budget-minutes"):
            TimeBudget(bad, planned_epochs=10)


def _ctx(method, epochs, **options):
    plans = tiny_plans()
    return MethodContext(plans=plans, configuration=plans.configurations["3d"], dataset_json={},
                         options=method.make_options({}, options), device=torch.device("cpu"), num_input_channels=1,
                         num_classes=3, num_epochs=epochs, iterations_per_epoch=250)


def _step(net, optimizer):
    optimizer.zero_grad()
    net(torch.ones(1, 1, 4, 4, 4)).sum().backward()
    optimizer.step()


def test_poly_schedule_is_rebuilt_for_the_epochs_that_fit():
    """unet with SGD, planned for 1000 epochs, shortened to 10 after 2 epochs: the learning rate of
    epoch 3 is poly(2/10), not poly(2/1000), and SGD's momentum carries over."""
    method = get_plugin_system().methods.get("unet")
    net = torch.nn.Conv3d(1, 2, 3)
    ctx = _ctx(method, 1000, optimizer="sgd")
    optimizer, scheduler = method.configure_optimizers(net, ctx)
    for _ in range(2):
        _step(net, optimizer)
        scheduler.step()
    base = ctx.options.lr
    assert optimizer.param_groups[0]["lr"] == pytest.approx(base * (1 - 2 / 1000) ** 0.9)
    momentum = optimizer.state[net.weight]["momentum_buffer"].clone()
    ctx.num_epochs = 10
    optimizer, scheduler = rebuild_schedule(method, net, optimizer, scheduler, ctx, epochs_done=2)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(base * (1 - 2 / 10) ** 0.9)
    assert torch.equal(optimizer.state[net.weight]["momentum_buffer"], momentum)
    for _ in range(8):
        _step(net, optimizer)
        scheduler.step()
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)  # a complete schedule


def test_auto_optimizer_may_change_kind_for_the_shorter_run():
    """optimizer=auto picks SGD for 1000 x 250 iterations and AdamW for 3 x 250: the rebuilt
    optimiser is AdamW with a fresh state (SGD's momentum means nothing to it)."""
    method = get_plugin_system().methods.get("unet")
    net = torch.nn.Conv3d(1, 2, 3)
    ctx = _ctx(method, 1000)
    optimizer, scheduler = method.configure_optimizers(net, ctx)
    assert isinstance(optimizer, torch.optim.SGD)
    _step(net, optimizer)
    scheduler.step()
    ctx.num_epochs = 3
    optimizer, scheduler = rebuild_schedule(method, net, optimizer, scheduler, ctx, epochs_done=1)
    assert isinstance(optimizer, torch.optim.AdamW) and not optimizer.state
    assert optimizer.param_groups[0]["lr"] == pytest.approx(ctx.options.adamw_lr * (1 - 1 / 3) ** 0.9)
