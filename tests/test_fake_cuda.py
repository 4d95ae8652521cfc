"""The GPU paths of the real entry points, run on the CPU with CUDA faked at the hardware boundary.

What is faked (tests/fake_cuda.py): the driver calls only, i.e. device discovery and initialisation,
the current device, device properties (an H100, or a Turing T4 without native bf16), memory
statistics, synchronisation, pinned memory, the accelerator's stream, NCCL (gloo instead). Tensors
sent to ``cuda:N`` stay on the CPU but report ``cuda:N``; mixing two GPUs' tensors, a host tensor
with a device tensor, or ``.numpy()`` of a device tensor fails as it would on a GPU. Every argument
check in torch's Python layer runs for real: ``torch.cuda.set_device(torch.device("cuda"))`` raises
"Expected a torch.device with a specified index or an integer" here as on a GPU (restore that call
with an index-less device in the trainer and the training tests below fail).

What these tests cannot prove: kernels (every operation is the CPU's, in float32; autocast("cuda")
is entered with the chosen dtype but does not cast CPU tensors), bf16/fp16 numerics, cuDNN,
torch.compile's code generation (dynamo needs the device's streams: the network is wrapped as
compiled but runs eagerly), NCCL, speed, memory, and tensors created outside the fake's mode (other
threads, data-loader workers). ``bash benchmarks/gpu/gpu_check.sh`` on a GPU checks those.
"""
from __future__ import annotations

import gc
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fake_cuda import H100, T4, DeviceBug, FakeCuda
from test_device_guard import TINY_OPTIONS
from training_data import NAME, make_tiny_preprocessed

TESTS = Path(__file__).resolve().parent
FOLD = "0"
FAST = ["--epochs", "1", "--iters-per-epoch", "1", "--num-workers", "0", "--quiet"]


def _options(method: str) -> list[str]:
    out = []
    for key, value in TINY_OPTIONS[method].items():
        out += [f"--{key.replace('_', '-')}", *value.split()]
    return out


def _train(method: str, *extra: str) -> int:
    from autosam.cli.train import main

    return main(["990", "3d", method, FOLD, *FAST, *_options(method), *extra])


def _fold(dirs, method: str) -> Path:
    return dirs["results"] / NAME / f"{method}__autosamPlans__3d" / f"fold_{FOLD}"


def _checkpoint(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.fixture
def tiny(autosam_dirs):
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    return autosam_dirs


# ----------------------------------------------------------------------------------- the harness itself
def test_fake_cuda_leaves_torch_argument_checks_real():
    was = torch.cuda.is_available()
    with FakeCuda(2):
        assert torch.cuda.is_available() and torch.cuda.device_count() == 2 and torch.cuda.is_initialized() is False
        with pytest.raises((ValueError, RuntimeError), match="Expected a torch.device with a specified index"):
            torch.cuda.set_device(torch.device("cuda"))  # the trainer's old call, refused as on a GPU
        torch.cuda.set_device(torch.device("cuda", 1))
        assert torch.cuda.current_device() == 1 and torch.cuda.is_initialized()
        with pytest.raises(RuntimeError, match="invalid device ordinal"):
            torch.cuda.set_device(2)
        assert torch.cuda.get_device_name(0) == H100.name
        assert torch.cuda.is_bf16_supported(including_emulation=False)
    with FakeCuda(1, T4):
        assert not torch.cuda.is_bf16_supported(including_emulation=False)
        assert torch.cuda.get_device_capability() == (7, 5)
    assert torch.cuda.is_available() == was  # everything restored


def test_fake_cuda_knows_where_each_tensor_would_live():
    with FakeCuda(2):
        net = torch.nn.Linear(3, 2).to("cuda:1")
        assert net.weight.device == torch.device("cuda", 1) and net.weight.is_cuda
        with pytest.raises(RuntimeError, match="same device"):
            net(torch.ones(4, 3, device="cuda"))  # a bare cuda is the current device, cuda:0
        torch.cuda.set_device(1)
        assert net(torch.ones(4, 3, device="cuda")).device == torch.device("cuda", 1)
        with pytest.raises(DeviceBug, match="host tensor"):
            _ = net.weight * torch.ones(2, 3)
        with pytest.raises(DeviceBug, match="numpy"):
            net.weight.detach().numpy()
        host = torch.ones(2)
        moved = host.to("cuda")
        assert moved is not host and host.device.type == "cpu" and moved.cpu().device.type == "cpu"


# ----------------------------------------------------------------------------------- autosam_train
@pytest.mark.parametrize("device, index", [(None, 0), ("cuda", 0), ("cuda:0", 0), ("cuda:1", 1)])
def test_autosam_train_on_a_gpu_with_every_device_spelling(device, index, tiny, monkeypatch):
    """``autosam_train 990 3d unet 0`` (the mission's command without --device, and each spelling of
    it) trains, validates and continues with ``--c`` on the GPU it names; the final validation runs
    through the uncompiled network (unet compiles on CUDA) after the training loop's optimiser and
    gradients were freed."""
    from autosam.plugins import get_method
    from autosam.training import validation

    unet = get_method("unet")
    built, validated, state_at_validation = [], [], []
    build = unet.build_network
    monkeypatch.setattr(unet, "build_network", lambda ctx: built.append(build(ctx)) or built[-1])
    predict = unet.predict_volume
    monkeypatch.setattr(unet, "predict_volume", lambda network, *a, **k: validated.append(network) or predict(network, *a, **k))
    validate = validation.validate_fold

    def validate_fold(method, network, *args, **kwargs):
        gc.collect()
        optimisers = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer)
                      and any(p is q for g in o.param_groups for p in g["params"] for q in network.parameters())]
        state_at_validation.append((all(p.grad is None for p in network.parameters()), len(optimisers)))
        return validate(method, network, *args, **kwargs)

    monkeypatch.setattr(validation, "validate_fold", validate_fold)
    extra = [] if device is None else ["--device", device]
    with FakeCuda(2) as fake:
        assert _train("unet", *extra) == 0
        assert _train("unet", *extra, "--c", "--epochs", "2") == 0
    fold = _fold(tiny, "unet")
    from autosam.utils.files import read_json

    assert read_json(fold / "metadata.json")["device"] == f"cuda:{index}"
    assert fake.set_device_calls and set(fake.set_device_calls) == {index}
    assert _checkpoint(fold / "checkpoint_final.pth")["epoch"] == 2
    assert len(read_json(fold / "validation" / "summary.json")["metric_per_case"]) == 2
    assert all(type(n).__name__ == "OptimizedModule" for n in built)  # compiled by default on CUDA
    assert validated and not any(type(n).__name__ == "OptimizedModule" for n in validated)
    assert state_at_validation == [(True, 0), (True, 0)]  # no gradients, no optimiser left
    assert fake.empty_cache_calls > 0


@pytest.mark.parametrize("card, dtype, scaled, compile_option", [(H100, torch.bfloat16, False, "true"),
                                                                  (T4, torch.float16, True, "false")])
def test_autocast_dtype_inside_train_step(card, dtype, scaled, compile_option, tiny, monkeypatch, caplog):
    """bf16 without a GradScaler on a card with native bf16, fp16 with one otherwise; compile on/off."""
    from autosam.plugins import get_method

    unet = get_method("unet")
    seen, built = [], []
    step = unet.train_step
    monkeypatch.setattr(unet, "train_step", lambda *a, **k: seen.append(
        (torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda"))) or step(*a, **k))
    build = unet.build_network
    monkeypatch.setattr(unet, "build_network", lambda ctx: built.append(build(ctx)) or built[-1])
    with FakeCuda(1, card):
        assert _train("unet", "--compile", compile_option) == 0
    assert seen and set(seen) == {(True, dtype)}
    ck = _checkpoint(_fold(tiny, "unet") / "checkpoint_final.pth")
    assert (ck["grad_scaler"] is not None) == scaled
    assert (type(built[0]).__name__ == "OptimizedModule") == (compile_option == "true")


@pytest.mark.slow  # 10-90 s per method on 2 shared cores
@pytest.mark.parametrize("method", sorted(TINY_OPTIONS))
def test_every_method_trains_validates_and_continues_on_a_gpu(method, tiny):
    """Every method: one iteration on the default device (CUDA), the final validation, then ``--c``."""
    with FakeCuda(1):
        assert _train(method) == 0
        assert _train(method, "--c", "--epochs", "2") == 0
    fold = _fold(tiny, method)
    assert _checkpoint(fold / "checkpoint_final.pth")["epoch"] == 2
    assert (fold / "validation" / "summary.json").is_file()


# ----------------------------------------------------------------------------------- prediction
@pytest.fixture
def unet_model(tiny):
    """An untrained unet fold ``all`` and one raw test image (the tiny dataset's geometry)."""
    from autosam.experiment_planning.plans import Plans
    from autosam.io.image import ImageGeometry, write_image
    from training_data import make_case, untrained_model

    plans = Plans.load(tiny["preprocessed"] / NAME / "autosamPlans.json")
    folder = tiny["results"] / NAME / "unet__autosamPlans__3d"
    untrained_model(plans, folder, "unet")
    img, _ = make_case(np.random.default_rng(3))
    images = tiny["raw"] / "imagesTs"
    write_image(images / "case_900_0000.nii.gz", img[0], ImageGeometry(spacing=(2.0, 1.0, 1.0), origin=(0, 0, 0),
                                                                     direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                                                                     shape=img.shape[1:]))
    return folder, images


def _labels(folder: Path) -> np.ndarray:
    from autosam.io.image import read_image

    return read_image(next(folder.glob("*.nii.gz")))[0]


@pytest.mark.parametrize("tta", [True, False])
def test_prediction_commands_on_a_gpu(tta, unet_model, tmp_path):
    """autosam_predict, autosam_predict_from_modelfolder and Predictor on ``cuda`` agree with the CPU."""
    from autosam.cli.predict import main as predict_main
    from autosam.cli.predict_modelfolder import main as modelfolder_main
    from autosam.inference.predictor import Predictor
    from autosam.io.image import read_image

    folder, images = unet_model
    flags = [] if tta else ["--disable_tta"]
    common = ["-i", str(images), "-f", "all", "--quiet", *flags]
    assert predict_main([*common, "-o", str(tmp_path / "cpu"), "-d", "990", "-c", "3d", "-m", "unet", "--device",
                         "cpu"]) == 0
    with FakeCuda(1):
        assert predict_main([*common, "-o", str(tmp_path / "gpu"), "-d", "990", "-c", "3d", "-m", "unet"]) == 0
        assert modelfolder_main([*common, "-o", str(tmp_path / "folder"), "-m", str(folder), "--device", "cuda"]) == 0
        predictor = Predictor(use_mirroring=tta, device="cuda")
        predictor.initialize_from_trained_model_folder(folder, ["all"])
        assert predictor.model.ctx.device == torch.device("cuda", 0)
        image, geometry = read_image(next(images.glob("*.nii.gz")))
        seg = predictor.predict_single_npy_array(image[None].astype(np.float32), {"spacing": list(geometry.spacing)})
    cpu = _labels(tmp_path / "cpu")
    for name in ("gpu", "folder"):
        assert (_labels(tmp_path / name) == cpu).mean() >= 0.99, name
    assert (np.asarray(seg) == cpu).mean() >= 0.99


def test_segment_box_on_a_gpu(tmp_path):
    from autosam.cli.segment_box import main as segment_box_main
    from autosam.io.image import ImageGeometry, read_image, write_image

    vol = np.zeros((4, 40, 48), np.float32)
    vol[:, 12:26, 14:30] = 200.0
    geometry = ImageGeometry((3.0, 0.8, 0.7), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1), vol.shape)
    write_image(tmp_path / "img.nii.gz", vol, geometry)
    with FakeCuda(1):
        assert segment_box_main(["-i", str(tmp_path / "img.nii.gz"), "-o", str(tmp_path / "seg.nii.gz"), "--box", "0",
                                 "10", "12", "3", "28", "32", "--backbone", "tiny", "-q"]) == 0
    seg, g = read_image(tmp_path / "seg.nii.gz")
    assert g.matches(geometry) and seg.shape == vol.shape


# ----------------------------------------------------------------------------------- torchrun
def _torchrun_env(dirs, count: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", AUTOSAM_DDP_TIMEOUT_MINUTES="3", FAKE_CUDA_COUNT=str(count))
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    for name, folder in dirs.items():
        env[f"AUTOSAM_{name.upper()}"] = str(folder)
    return env


def _torchrun(nproc: int, args: list[str], env: dict) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", "-m", "fake_cuda",
           "-m", "autosam.cli.train", "990", "3d", "unet", FOLD, *FAST, *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)


def test_torchrun_one_process_with_ddp_matches_the_plain_run(tiny, tmp_path):
    """``torchrun --nproc-per-node 1 ... --ddp``: a process group of one rank (NCCL -> gloo), two steps
    through DDP on cuda:0 (a parameter left out of the first step's graph fails the second); the
    weights equal a plain run's."""
    env = _torchrun_env(tiny, 1)
    proc = _torchrun(1, ["--ddp", "--compile", "false", "--iters-per-epoch", "2"], env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "DDP over 1 ranks" in proc.stdout + proc.stderr
    ddp = _checkpoint(_fold(tiny, "unet") / "checkpoint_final.pth")["network"]
    plain_dirs = dict(tiny, results=tmp_path / "plain_results")
    plain_dirs["results"].mkdir()
    env = _torchrun_env(plain_dirs, 1)
    proc = subprocess.run([sys.executable, "-m", "fake_cuda", "-m", "autosam.cli.train", "990", "3d", "unet", FOLD,
                           *FAST, "--compile", "false", "--iters-per-epoch", "2"], env=env, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plain = _checkpoint(_fold(plain_dirs, "unet") / "checkpoint_final.pth")["network"]
    assert plain.keys() == ddp.keys()
    for key in plain:
        torch.testing.assert_close(ddp[key], plain[key], rtol=1e-5, atol=1e-6, msg=key)


@pytest.mark.slow  # two ranks: about 30 s
def test_torchrun_two_processes_on_two_gpus(tiny):
    """``torchrun --nproc-per-node 2``: each rank on cuda:LOCAL_RANK, NCCL replaced by gloo."""
    proc = _torchrun(2, [], _torchrun_env(tiny, 2))
    assert proc.returncode == 0, proc.stderr[-3000:]
    fold = _fold(tiny, "unet")
    assert _checkpoint(fold / "checkpoint_final.pth")["epoch"] == 1
    assert (fold / "validation" / "summary.json").is_file()
