"""The separately packaged example plugin (tests/example_plugin), installed as CI installs it:
``pip install ./tests/example_plugin --no-deps``. It must appear in ``autosam_plugins`` and be
selectable by name like any built-in method or planner."""
from __future__ import annotations

import importlib.metadata as md
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from autosam.plugins import Entry, get_method, get_plugin_system, get_planner
from autosam.training.method import Method, MethodContext
from plugin_test_data import DATASET_JSON, synthetic_fingerprint, synthetic_plans

try:
    DIST = md.distribution("autosam-example-plugin")
except md.PackageNotFoundError:
    DIST = None
pytestmark = pytest.mark.skipif(
    DIST is None, reason="example plugin not installed: run `pip install ./tests/example_plugin --no-deps` (.ci/run does)"
)


@pytest.fixture
def system():
    """The process-wide plugin system (the one get_method/get_planner use), fetched per test."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # other plugins' problems are not this file's subject
        return get_plugin_system()


def test_listed_by_the_autosam_plugins_command():
    # the console script of the environment running the tests (its bin/ may not be on PATH)
    exe = Path(sys.executable).parent / "autosam_plugins"
    if not exe.exists():
        exe = shutil.which("autosam_plugins") or pytest.fail("autosam_plugins console script is not installed")
    out = subprocess.run([exe, "--json"], capture_output=True, text=True, timeout=300, check=True).stdout
    row = next(r for r in json.loads(out)["plugins"] if r["name"] == "example")
    assert row["distribution"] == "autosam-example-plugin" and row["version"] == DIST.version
    assert row["module"] == "autosam_example_plugin.plugin" and row["status"] == "loaded"
    assert row["hooks"] == ["method_suitability", "plan_method_section", "register_methods", "register_planners"]
    assert row["methods"] == ["example_tiny"] and row["planners"] == ["example_planner"]


def test_method_selected_by_name_trains_and_predicts(system):
    method = get_method("example_tiny")
    assert isinstance(method, Method) and method.configurations == ("2d", "3d")
    entry = system.methods.entry("example_tiny")
    assert (entry.distribution, entry.version) == ("autosam-example-plugin", DIST.version)

    plans = synthetic_plans([4, 12, 12])
    options = method.make_options({"features": 8}, {"learning-rate": "0.05"})
    assert (options.features, options.learning_rate) == (8, 0.05)
    ctx = MethodContext(plans=plans, configuration=plans.configurations["3d"], dataset_json={}, options=options,
                        device=torch.device("cpu"), num_input_channels=1, num_classes=3, num_epochs=2)
    torch.manual_seed(0)
    net = method.build_network(ctx)
    loss_fn = method.build_loss(ctx)
    opt, sched = method.configure_optimizers(net, ctx)
    # a learnable toy problem: the class is given by the intensity band
    data = torch.rand(2, 1, 4, 12, 12)
    target = (data * 3).floor().clamp(max=2)
    losses = []
    for _ in range(15):
        step = method.train_step(net, {"data": data, "target": target}, loss_fn, ctx)
        opt.zero_grad()
        step.loss.backward()
        opt.step()
        losses.append(step.loss.item())
    sched.step()
    assert losses[-1] < 0.7 * losses[0]
    assert opt.param_groups[0]["lr"] < 0.05  # the schedule decays
    assert method.predict_logits(net, data, ctx).shape == (2, 3, 4, 12, 12)


def test_plan_method_section_and_vote(system):
    hook = system.hook
    fingerprint = synthetic_fingerprint()
    for patch, expected in (([8, 16, 16], 8), ([16, 16], 16)):
        cfg = synthetic_plans(patch).configurations["3d" if len(patch) == 3 else "2d"]
        sections = hook.plan_method_section(method_name="example_tiny", configuration_name=cfg.name,
                                            configuration=cfg, fingerprint=fingerprint, dataset_json=DATASET_JSON)
        assert {"features": expected} in sections
    cfg = synthetic_plans([8, 16, 16]).configurations["3d"]
    assert {"features": 8} not in hook.plan_method_section(method_name="some_other_method", configuration_name="3d",
                                                           configuration=cfg, fingerprint=fingerprint, dataset_json=DATASET_JSON)
    votes = [v for vs in hook.method_suitability(fingerprint=fingerprint, dataset_json=DATASET_JSON) for v in (vs or [])]
    mine = [v for v in votes if v[0] == "example_tiny"]
    assert len(mine) == 1 and mine[0][1] < 0.5  # never out-votes the unet baseline


def test_planner_selected_by_name_wraps_the_default_at_call_time(system, monkeypatch):
    planner = get_planner("example_planner")
    calls = []

    class FakeDefault:
        name = "default"

        def plan(self, *args, **kwargs):
            calls.append((args, kwargs))
            return synthetic_plans([8, 16, 16], batch_size=5)

    # registered after the example plugin was built: the planner must look "default" up when planning
    monkeypatch.setitem(system.planners._entries, "default", Entry(FakeDefault(), "test", "local", "0"))
    plans = planner.plan("fingerprint", {"labels": {}}, gpu_memory_gb=8, plans_name="examplePlans", configurations=("3d",))
    assert calls == [(("fingerprint", {"labels": {}}), {"gpu_memory_gb": 8, "plans_name": "examplePlans",
                                                        "configurations": ("3d",)})]
    assert plans.planner == "example_planner"
    assert plans.configurations["3d"].batch_size == 2


def test_planning_with_example_planner_writes_its_own_plans(system, autosam_dirs):
    """Through autosam's planning entry point, with the real default planner underneath."""
    from autosam.experiment_planning.planning import plan_experiment
    from autosam.utils.files import write_json

    name = "Dataset999_Example"
    (autosam_dirs["raw"] / name).mkdir()
    write_json(autosam_dirs["raw"] / name / "dataset.json", DATASET_JSON)
    (autosam_dirs["preprocessed"] / name).mkdir()
    synthetic_fingerprint().save(autosam_dirs["preprocessed"] / name / "dataset_fingerprint.json")

    default = plan_experiment(999)
    mine = plan_experiment(999, planner="example_planner")
    assert (autosam_dirs["preprocessed"] / name / "example_plannerPlans.json").is_file()
    assert (autosam_dirs["preprocessed"] / name / "autosamPlans.json").is_file()  # untouched, side by side
    assert mine.planner == "example_planner" and default.planner == "default"
    assert mine.configurations.keys() == default.configurations.keys()
    for cname, cfg in mine.configurations.items():
        ref = default.configurations[cname]
        assert (cfg.spacing, cfg.patch_size) == (ref.spacing, ref.patch_size)
        assert cfg.batch_size == min(ref.batch_size, 2)
        assert cfg.methods["example_tiny"] == {"features": 16 if cname == "2d" else 8}  # our plan_method_section
    assert ["example_tiny", 0.01, "example plugin; a tiny network for demonstrations only"] in mine.method_votes
    assert mine.default_method != "example_tiny"


def test_the_package_is_really_installed_not_imported_from_the_tree():
    import autosam_example_plugin

    files = {str(f) for f in DIST.files or []}
    assert any(f.endswith("entry_points.txt") for f in files)
    assert "example = autosam_example_plugin.plugin" in DIST.read_text("entry_points.txt")
    assert autosam_example_plugin.__version__ == DIST.version
    assert sys.modules["autosam_example_plugin"] is autosam_example_plugin
