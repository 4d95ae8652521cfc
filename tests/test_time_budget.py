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


class _Clock:
    """The trainer's clock: every reading is ``step`` seconds after the previous one; the trainer
    reads it at the start and at the end of an epoch, so each epoch lasts ``step`` seconds whatever
    the machine does."""

    def __init__(self, step: float):
        self.now, self.step = 1_000_000.0, step

    def time(self) -> float:
        self.now += self.step
        return self.now


def _budget_run(autosam_dirs, monkeypatch, step, extra=(), method="unet", options=()):
    import types

    from autosam.cli.train import main
    from autosam.training import loop
    from training_data import NAME

    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=_Clock(step).time))
    argv = [NAME, "3d", method, "0", "--epochs", "1000", "--iters-per-epoch", "1", "--device", "cpu",
            "--num-workers", "0", "--time-budget-minutes", "1", "--quiet", *options, *extra]
    assert main(argv) == 0
    return autosam_dirs["results"] / NAME / f"{method}__autosamPlans__3d" / "fold_0"


def test_cli_budget_trains_a_whole_schedule_then_validates_and_resume_adds_nothing(autosam_dirs, monkeypatch):
    """--epochs 1000 --time-budget-minutes 1 with 20 s epochs: 3 epochs fit; the poly schedule runs
    over those 3; training stops when the minute is used; the final checkpoint, the validation and
    metadata.json follow; --c with the same budget trains nothing more."""
    from autosam.training import checkpoint as ckpt_io
    from autosam.utils.files import read_json
    from training_data import make_tiny_preprocessed

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    fold_dir = _budget_run(autosam_dirs, monkeypatch, step=20.0)
    ck = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")
    assert ck["epoch"] == 3 and ck["num_epochs"] == 3
    lrs = ck["logger"]["lr"]
    base = lrs[0]
    assert lrs == pytest.approx([base, base * (2 / 3) ** 0.9, base * (1 / 3) ** 0.9])  # a complete poly schedule
    meta = read_json(fold_dir / "metadata.json")
    assert meta["time_budget_minutes"] == 1.0
    budget = meta["time_budget"]
    assert (budget["planned_epochs"], budget["epochs_done"], budget["iterations_done"]) == (1000, 3, 3)
    assert "used after 3 epochs" in budget["stop_reason"]
    assert (fold_dir / "validation" / "summary.json").is_file()
    log = "".join(p.read_text() for p in fold_dir.glob("training_log_*.txt"))
    assert "3 of 1000 epochs fit into 1 min" in log

    _budget_run(autosam_dirs, monkeypatch, step=20.0, extra=["--c"])
    assert ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")["epoch"] == 3


def test_an_epoch_longer_than_the_budget_still_finishes(autosam_dirs, monkeypatch):
    from autosam.training import checkpoint as ckpt_io
    from training_data import make_tiny_preprocessed

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    fold_dir = _budget_run(autosam_dirs, monkeypatch, step=45.0, extra=["--disable_checkpointing"])
    assert ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")["epoch"] == 1


def test_bad_budget_is_refused_before_anything_is_written(autosam_dirs, capsys):
    from autosam.cli.train import main
    from training_data import NAME, make_tiny_preprocessed

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    assert main([NAME, "3d", "unet", "0", "--time-budget-minutes", "0", "--device", "cpu"]) != 0
    assert "time-budget-minutes" in capsys.readouterr().err
    assert not (autosam_dirs["results"] / NAME).exists()


@pytest.mark.parametrize("name", ["unet", "sautomed", "masksam", "msam", "medlsam"])
def test_every_method_schedule_follows_the_budget(name):
    """For every built-in method, the rebuilt schedule after 1 of 100 planned epochs (shortened to 4)
    gives the learning rates a run planned for 4 epochs has after its first epoch."""
    import warnings

    from test_device_guard import TINY_OPTIONS

    method = get_plugin_system().methods.get(name)
    plans = tiny_plans()

    def ctx(epochs):
        return MethodContext(plans=plans, configuration=plans.configurations["3d"], dataset_json={},
                             options=method.make_options({}, dict(TINY_OPTIONS[name])), device=torch.device("cpu"),
                             num_input_channels=1, num_classes=3, num_epochs=epochs, iterations_per_epoch=5)

    torch.manual_seed(0)
    c = ctx(100)
    net = method.build_network(c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optimizer, scheduler = method.configure_optimizers(net, c)
        scheduler.step()
        expected_opt, expected_sched = method.configure_optimizers(net, ctx(4))
        expected_sched.step()
    c.num_epochs = 4
    optimizer, scheduler = rebuild_schedule(method, net, optimizer, scheduler, c, epochs_done=1)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["lr"] for g in expected_opt.param_groups])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(3):
            scheduler.step()
            expected_sched.step()
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([g["lr"] for g in expected_opt.param_groups])


def test_compare_methods_trains_each_candidate_for_the_budget_and_ranks_them(autosam_dirs, monkeypatch, capsys):
    """autosam_compare_methods: unet and the example plugin's method, 1 min each (20 s epochs on the
    trainer's clock: 3 epochs each), ranked by fold 0's validation Dice; find_best's result (which -m
    auto follows) and compare_methods.json name the winner; a second call reuses the runs."""
    import types

    from autosam.cli.compare_methods import main
    from autosam.training import loop
    from autosam.utils.files import read_json
    from training_data import NAME, make_tiny_preprocessed

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=5)
    monkeypatch.setattr(loop, "time", types.SimpleNamespace(time=_Clock(20.0).time))
    argv = ["-d", NAME, "-m", "unet", "example_tiny", "--time-budget-minutes", "1", "--device", "cpu"]
    assert main(argv) == 0
    report = read_json(autosam_dirs["results"] / NAME / "compare_methods.json")
    assert [r["method"] for r in report["runs"]] == ["unet", "example_tiny"]
    assert all(r["iterations"] == 3 * report_iters for r, report_iters in
               zip(report["runs"], [read_json(autosam_dirs["results"] / NAME / f"{m}__autosamPlans__3d" / "fold_0" /
                                              "metadata.json")["iterations_per_epoch"] for m in ("unet", "example_tiny")]))
    dice = {r["method"]: r["dice"] for r in report["runs"]}
    assert report["winner"].startswith(max(dice, key=dice.get))
    best = read_json(autosam_dirs["results"] / NAME / "find_best_configuration.json")
    assert report["winner"] == best["ranking"][0]["name"]
    capsys.readouterr()
    assert all(r["minutes_with_validation"] is not None for r in report["runs"])
    assert main(argv) == 0
    assert capsys.readouterr().out.count("already trained with this budget, reused") == 2
    again = read_json(autosam_dirs["results"] / NAME / "compare_methods.json")
    assert [r["dice"] for r in again["runs"]] == [r["dice"] for r in report["runs"]]
    assert all(r["minutes_with_validation"] is None for r in again["runs"])  # not timed by the call that reused them


def test_resume_with_more_epochs_continues_the_schedule_not_at_zero(autosam_dirs):
    """A finished 2-epoch poly run ends at learning rate 0; --c --epochs 4 must train epochs 3-4 on
    the 4-epoch schedule (poly(2/4), poly(3/4)), not spend its first epoch at 0."""
    from autosam.training import checkpoint as ckpt_io
    from autosam.training.trainer import run_training
    from training_data import NAME, make_tiny_preprocessed

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    kw = dict(iters_per_epoch=1, device="cpu", num_workers=0, validate=False)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=2, **kw)
    run_training(NAME, "3d", "unet", 0, epochs=4, resume=True, **kw)
    lrs = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")["logger"]["lr"]
    base = lrs[0]
    assert lrs[2:] == pytest.approx([base * (2 / 4) ** 0.9, base * (1 / 4) ** 0.9])
