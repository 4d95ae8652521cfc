"""Learning test of ``medlsam``'s localiser through the real pipeline: example ``organs`` dataset ->
plan_and_preprocess -> run_training (self-supervised MedLAM on the fold's images, support
prototypes from the fold's labelled cases) -> localisation of the held-out validation cases.

Runtime: 250 training iterations (~15-20 min on 2 shared, loaded cores; over the ~4 min aimed
for: shorter schedules do not learn yet). The trained localiser is compared with the same network untrained (random weights, prototypes
built the same way): a broken RDR loss, pair sampling, prototype averaging, agent move, orientation
handling or coarse -> fine box mapping leaves the 3D IoU of the localised boxes at the untrained
level. Figures: see ``documentation/benchmarks.md`` ("medlsam")."""
from __future__ import annotations

import numpy as np
import pytest
import torch

# the planner's small-image section (3 poolings on 32^3 coarse patches, 8 base channels) plus the
# schedule measured in documentation/benchmarks.md ("medlsam"): 250 iterations. After 60 iterations
# the boxes are still no better than untrained ones (measured IoU ~0.00 vs ~0.03), hence the length.
OPTIONS = {"mss_refine": "false"}
EPOCHS, ITERS = 10, 25


@pytest.mark.slow
def test_medlsam_localiser_learns_on_example_organs(autosam_dirs):
    from autosam.data.example import make_example_dataset
    from autosam.experiment_planning.splits import get_or_create_splits
    from autosam.inference.predictor import load_trained_model
    from autosam.paths import preprocessed_dir
    from autosam.pipeline import plan_and_preprocess
    from autosam.training.dataloading import PreprocessedDataset
    from autosam.training.trainer import run_training

    make_example_dataset(autosam_dirs["raw"], 999, 8, "organs")
    plan_and_preprocess(999, num_processes=1, configurations=("3d",))
    fold_dir = run_training(999, "3d", "medlsam", 0, epochs=EPOCHS, iters_per_epoch=ITERS, device="cpu",
                            method_overrides=OPTIONS, num_workers=0, validate=False)
    assert (fold_dir / "checkpoint_final.pth").is_file()
    model = load_trained_model(fold_dir.parent, folds=(0,), device="cpu")
    method, ctx, trained = model.method, model.ctx, model.folds[0].network
    assert trained.proto_valid[1:].any(1).all(), "every organ must get prototypes from the support cases"

    pre = preprocessed_dir() / "Dataset999_Example"
    data_folder = pre / ctx.configuration.data_identifier
    split = get_or_create_splits(pre, PreprocessedDataset(data_folder).keys)[0]
    dataset = PreprocessedDataset(data_folder, sorted(split["train"] + split["val"]))
    report = method.validation_report(trained, ctx, dataset, split["val"])

    torch.manual_seed(0)
    untrained = method.build_network(ctx)
    method.after_training(untrained, ctx, dataset.subset(split["train"]), list(split["train"]))
    baseline = method.validation_report(untrained, ctx, dataset, split["val"])

    iou, iou0 = report["localization_iou"], baseline["localization_iou"]
    assert sorted(iou) == ["1", "2", "3", "4"]
    print("trained", iou, "untrained", iou0)
    # measured runs of this schedule (means): 0.35, 0.27, 0.25 and, after the per-component
    # prototypes and shifted MSS twins, 0.24 (liver 0.33, spleen 0.23, kidneys 0.41, aorta 0.00);
    # untrained 0.00-0.03. Runs vary a lot, hence the margin.
    assert report["localization_iou_mean"] > 0.12, report
    assert report["localization_iou_mean"] > baseline["localization_iou_mean"] + 0.08, (report, baseline)
