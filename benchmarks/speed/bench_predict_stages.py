"""Where `autosam_predict`'s time goes, stage by stage, next to nnU-Net's, on one case of a
`bench_predict.py` work folder (same weights, one process each, torch's default threads); then the
network alone per patch: eager vs the frozen TorchScript forward of the `unet` method, one call of
8 mirrored copies vs 8 single calls.

    python benchmarks/speed/bench_predict.py --workdir /work/bench/bp          # once: models + inputs
    python benchmarks/speed/bench_predict_stages.py --workdir /work/bench/bp --case ctmid

``--skip-stages`` measures only the per-patch part (a minute), ``--only autosam|nnunet`` one tool.
``--allocator-check N`` instead runs N rounds of two fresh processes, one with glibc's default
allocator settings (``AUTOSAM_CPU_ALLOCATOR=default``) and one with autosam's
(``autosam.utils.cpu_allocator``), each timing 16 frozen forward passes: wall, user and system
seconds and minor page faults per forward.
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch

DATASET = "Dataset997_PredictBench"


def _clock():
    return time.perf_counter(), time.process_time()


def _since(t) -> str:
    wall, cpu = _clock()
    return f"wall {wall - t[0]:6.1f} s, CPU {cpu - t[1]:6.1f} s"


def stages_autosam(work: Path, image: str) -> None:
    t = _clock()
    from autosam.inference.export import export_prediction
    from autosam.inference.predictor import load_trained_model, predict_preprocessed_case
    from autosam.preprocessing.preprocessor import preprocess_case
    print("autosam import     ", _since(t)); t = _clock()
    model = load_trained_model(work / "results" / DATASET / "unet__autosamPlans__3d", [0])
    print("autosam model      ", _since(t)); t = _clock()
    data, _, props = preprocess_case([image], model.plans, "3d")
    print("autosam preprocess ", _since(t), tuple(data.shape)); t = _clock()
    probs = predict_preprocessed_case(model.method, model.folds, data, props, model.ctx, True)
    print("autosam predict    ", _since(t)); t = _clock()
    export_prediction(probs, props, model.configuration, work / "stages_autosam.nii.gz")
    print("autosam export     ", _since(t))


def stages_nnunet(work: Path, image: str) -> None:
    t = _clock()
    from nnunetv2.inference.export_prediction import export_prediction_from_logits
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
    print("nnU-Net import     ", _since(t)); t = _clock()
    p = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True, device=torch.device("cpu"),
                        verbose=False, allow_tqdm=False)
    p.initialize_from_trained_model_folder(str(work / "nnunet_model"), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    print("nnU-Net model      ", _since(t)); t = _clock()
    data, _, props = DefaultPreprocessor(verbose=False).run_case([image], None, p.plans_manager, p.configuration_manager,
                                                                  p.dataset_json)
    print("nnU-Net preprocess ", _since(t), tuple(data.shape)); t = _clock()
    logits = p.predict_logits_from_preprocessed_data(torch.from_numpy(data)).cpu()
    print("nnU-Net predict    ", _since(t)); t = _clock()
    export_prediction_from_logits(logits, props, p.configuration_manager, p.plans_manager, p.dataset_json,
                                  str(work / "stages_nnunet"), False)
    print("nnU-Net export     ", _since(t))


def per_patch(work: Path, repeats: int) -> None:
    from autosam.inference.cpu_inference import frozen_cpu_forward
    from autosam.inference.predictor import load_trained_model

    model = load_trained_model(work / "results" / DATASET / "unet__autosamPlans__3d", [0])
    net = model.folds[0].network.eval()
    net.decoder.deep_supervision = False
    patch = list(model.configuration.patch_size)
    x = torch.randn(1, 1, *patch)
    flips = [(), (2,), (3,), (4,), (2, 3), (2, 4), (3, 4), (2, 3, 4)]
    frozen = frozen_cpu_forward(net, (1, 1, *patch))
    with torch.inference_mode():
        print(f"frozen vs eager: max |difference| {(frozen(x) - net(x)).abs().max().item():.2e}")
        for name, f in (("eager", net), ("frozen", frozen)):
            for label, run in (("8 mirrored copies in one call", lambda f=f: f(torch.cat([x.flip(a) if a else x for a in flips]))),
                               ("8 single calls", lambda f=f: [f(x.flip(a) if a else x) for a in flips])):
                run()
                best = min(_timed(run) for _ in range(repeats))
                print(f"{name:6s} {label:30s}: {best / 8:.3f} s per patch (best of {repeats})")


def allocator_forward(work: Path, passes: int = 16) -> None:
    """One process: the frozen forward ``passes`` times, per-forward wall / user / sys / faults."""
    import resource

    from autosam.inference.cpu_inference import frozen_cpu_forward
    from autosam.inference.predictor import load_trained_model
    from autosam.utils.cpu_allocator import tune_cpu_allocator

    model = load_trained_model(work / "results" / DATASET / "unet__autosamPlans__3d", [0])  # tunes unless told not to
    net = model.folds[0].network.eval()
    net.decoder.deep_supervision = False
    patch = list(model.configuration.patch_size)
    x = torch.randn(1, 1, *patch)
    frozen = frozen_cpu_forward(net, (1, 1, *patch))
    with torch.inference_mode():
        frozen(x), frozen(x)
        r0, t = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for _ in range(passes):
            frozen(x).flip(2)  # the sliding window flips every output back
        wall, r1 = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF)
    print(f"allocator {'autosam' if tune_cpu_allocator() else 'default'}: {wall / passes:.3f} s per forward, "
          f"user {(r1.ru_utime - r0.ru_utime) / passes:.3f} s, sys {(r1.ru_stime - r0.ru_stime) / passes:.3f} s, "
          f"{(r1.ru_minflt - r0.ru_minflt) / passes:.0f} minor page faults", flush=True)


def allocator_check(work: Path, rounds: int) -> None:
    import subprocess
    import sys

    for _ in range(rounds):
        for setting in ("default", "tuned"):
            env = dict(os.environ, AUTOSAM_CPU_ALLOCATOR=setting)
            subprocess.run([sys.executable, __file__, "--workdir", str(work), "--allocator-forward"], env=env, check=True)


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", type=Path, required=True, help="a bench_predict.py --workdir folder")
    p.add_argument("--case", default="ctmid", choices=("ctsm", "ctmid"))
    p.add_argument("--only", choices=("autosam", "nnunet"), default=None)
    p.add_argument("--skip-stages", action="store_true")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--allocator-check", type=int, default=0, metavar="N",
                   help="N rounds of default vs autosam allocator settings, 16 forwards each (nothing else)")
    p.add_argument("--allocator-forward", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    work = args.workdir.resolve()
    for k in ("raw", "preprocessed", "results"):
        os.environ[f"AUTOSAM_{k.upper()}"] = str(work / k)
        os.environ[f"nnUNet_{k}"] = str(work / f"nnunet_{k}")
    if args.allocator_forward:
        return allocator_forward(work)
    if args.allocator_check:
        return allocator_check(work, args.allocator_check)
    image = str(work / "imagesTs" / f"{args.case}_0000.nii.gz")
    if not args.skip_stages:
        if args.only in (None, "autosam"):
            stages_autosam(work, image)
        if args.only in (None, "nnunet"):
            stages_nnunet(work, image)
    if args.only in (None, "autosam"):
        per_patch(work, args.repeats)


if __name__ == "__main__":
    main()
