"""Where autosam's prediction and nnU-Net's differ on one case, stage by stage, with the same weights.

Feeds both tools the same inputs at every stage: the preprocessing of the raw image (maximum
difference of the arrays), the sliding window on nnU-Net's preprocessed data (argmax agreement on
the preprocessed grid), the export of the *same* probabilities to the image's grid, and the whole
pipeline; with ``--label`` the Dice per class of each. The nnU-Net model folder is the one
``bench_predict.py --model ... --workdir W`` writes (``W/nnunet_model``: autosam's plans and fold-0
weights in nnU-Net's layout).

usage: python benchmarks/speed/bench_export_parity.py --autosam-model RESULTS/Dataset999_Example/unet__autosamPlans__3d \\
           --nnunet-model W/nnunet_model --image VAL/images/case_003_0000.nii.gz --label VAL/labels/case_003.nii.gz
"""
from __future__ import annotations

import argparse
import json

import numpy as np
import SimpleITK as sitk
import torch


def dice_per_class(seg: np.ndarray, ref: np.ndarray, labels: list[int]) -> list[float]:
    """Dice of each label as ``autosam_evaluate`` computes it (NaN where both masks are empty)."""
    from autosam.evaluation.metrics import label_metrics

    return [round(label_metrics(ref == k, seg == k, compute_hd95=False)["Dice"], 4) for k in labels]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--autosam-model", required=True)
    p.add_argument("--nnunet-model", required=True)
    p.add_argument("--image", required=True, help="one channel-0 image file (<case>_0000<ending>); single-channel models")
    p.add_argument("--label", default=None, help="its reference label file: Dice per class of every stage")
    a = p.parse_args(argv)
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    from autosam.inference.case_prediction import predict_preprocessed_case
    from autosam.inference.export import probabilities_to_segmentation
    from autosam.inference.model_loading import load_trained_model
    from autosam.preprocessing.preprocessor import preprocess_case

    nn = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                         verbose=False, allow_tqdm=False)
    nn.initialize_from_trained_model_folder(a.nnunet_model, use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    preprocessor = nn.configuration_manager.preprocessor_class(verbose=False)
    data_nn, _, props_nn = preprocessor.run_case([a.image], None, nn.plans_manager, nn.configuration_manager,
                                                 nn.dataset_json)
    model = load_trained_model(a.autosam_model, [0], "final", "cpu")
    data_a, _, props_a = preprocess_case([a.image], model.plans, model.configuration.name)
    out: dict = {"shapes": {"nnunet": list(data_nn.shape), "autosam": list(data_a.shape)}}
    if data_nn.shape == data_a.shape:
        out["preprocessed_max_abs_difference"] = float(np.abs(data_nn - data_a).max())
    logits_nn = nn.predict_logits_from_preprocessed_data(torch.from_numpy(data_nn)).float()
    probs_nn = torch.softmax(logits_nn, 0)
    probs_a_on_nn = predict_preprocessed_case(model.method, model.folds, data_nn, props_a, model.ctx)
    probs_a = predict_preprocessed_case(model.method, model.folds, data_a, props_a, model.ctx)
    out["sliding_window_argmax_agreement_same_data"] = float((probs_a_on_nn.argmax(0) == logits_nn.argmax(0)).float().mean())
    seg_nn = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits_nn, nn.plans_manager, nn.configuration_manager, nn.label_manager, props_nn)
    seg_export = probabilities_to_segmentation(probs_nn, props_a, model.configuration)
    seg_a = probabilities_to_segmentation(probs_a, props_a, model.configuration)
    out["export_agreement_same_probabilities"] = float((seg_nn == seg_export).mean())
    out["pipeline_agreement"] = float((seg_nn == seg_a).mean())
    if a.label:
        ref = sitk.GetArrayFromImage(sitk.ReadImage(a.label))
        labels = list(range(1, model.ctx.num_classes))
        out["dice"] = {"nnunet": dice_per_class(seg_nn, ref, labels),
                       "autosam_export_of_nnunet_probabilities": dice_per_class(seg_export, ref, labels),
                       "autosam": dice_per_class(seg_a, ref, labels)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
