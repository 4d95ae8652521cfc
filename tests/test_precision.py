"""Mixed precision, devices and checkpoints across devices (CPU-run checks of the GPU paths)."""
from __future__ import annotations

import logging

import pytest
import torch

from autosam.utils import precision

FP16_CPU = dict(device_type="cpu", dtype=torch.float16)


# ----------------------------------------------------------------------------- precision choice
@pytest.mark.parametrize("native, expected, scaled", [(True, torch.bfloat16, False), (False, torch.float16, True)])
def test_bf16_only_where_native_else_fp16_with_grad_scaler(native, expected, scaled):
    """On fake GPUs (tests/fake_cuda.py: only the hardware is faked; torch's is_bf16_supported reads
    the card's capability): cuda:1 is an H100 or a T4 (Turing, bf16 only emulated)."""
    from fake_cuda import H100, T4, FakeCuda

    with FakeCuda(2, [T4, H100] if native else [H100, T4]):
        dtype = precision.amp_dtype("cuda:1")
        assert torch.cuda.current_device() == 0  # asked about cuda:1 without switching to it
        assert (precision.grad_scaler(dtype, "cuda") is not None) == scaled
    assert dtype == expected
    assert precision.precision_name(dtype) == ("bf16" if native else "fp16")


def test_no_autocast_off_cuda():
    assert precision.amp_dtype("cpu") is None and precision.amp_dtype("mps") is None
    # prediction with --bf16: bf16 on the CPU only when asked, never on MPS
    assert precision.amp_dtype("cpu", cpu_bf16=True) is torch.bfloat16
    assert precision.amp_dtype("mps", cpu_bf16=True) is None
    assert precision.grad_scaler(None) is None
    with precision.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")


# ----------------------------------------------------------------------------- fp32 islands under fp16 autocast
def _layer_norms():
    from segment_anything.modeling.common import LayerNorm2d

    from autosam.sam.backbone import float32_layer_norms
    from autosam.sam.sam3d.prompt_encoder import LayerNorm3d

    return [(float32_layer_norms(LayerNorm2d(3)), 4), (LayerNorm3d(3), 5)]


@pytest.mark.parametrize("index", [0, 1])
def test_sam_layer_norms_stay_finite_under_fp16_autocast(index):
    norm, ndim = _layer_norms()[index]
    shape = (2, 3) + (4,) * (ndim - 2)
    # channels (6e4, 6e4, -6e4): x - mean is -8e4, beyond fp16's 65504 (segment-anything's own
    # LayerNorm2d gives inf here under fp16 autocast)
    huge = torch.tensor([6e4, 6e4, -6e4]).view(1, 3, *([1] * (ndim - 2))).expand(shape).contiguous()
    with torch.autocast(**FP16_CPU):
        out = norm(huge.half())
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert torch.allclose(out, norm(huge), atol=1e-4)  # the float32 result


def test_every_layer_norm2d_of_a_backbone_runs_in_float32():
    from segment_anything.modeling.common import LayerNorm2d

    from autosam.sam.backbones import build_backbone

    backbone = build_backbone("tiny", input_size=64, allow_random_init=True)
    norms = [m for m in backbone.modules() if isinstance(m, LayerNorm2d)]
    assert norms and all(type(m).__name__ == "Float32LayerNorm2d" for m in norms)
    state = backbone.state_dict()
    assert any(k.endswith("neck.1.weight") for k in state)  # same parameters and names as segment-anything's


def test_masksam_matching_cost_is_float32_under_fp16_autocast():
    from autosam_plugins.masksam.matching import CostWeights, SliceTarget, match_cost, match_slice

    gen = torch.Generator().manual_seed(0)
    masks = 100 * torch.randn(4, 64, 64, generator=gen)  # confident untrained logits over 4096 pixels
    target = SliceTarget(torch.tensor([0, 1]), (torch.rand(2, 64, 64, generator=gen) > 0.5).float(),
                         torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.2, 0.2, 0.9, 0.9]]))
    args = (torch.randn(4, 3, generator=gen), masks, masks, torch.rand(4, 4, generator=gen), target, CostWeights())
    with torch.autocast(**FP16_CPU):
        overflowing = match_cost(*args)  # the cost's matrix products in fp16: what match_slice avoids
        rows, cols = match_slice(*args)
    assert not torch.isfinite(overflowing).all()
    assert torch.isfinite(match_cost(*args)).all()
    assert sorted(cols.tolist()) == [0, 1] and len(set(rows.tolist())) == 2


# ----------------------------------------------------------------------------- devices
def test_device_flags_accept_cuda_index_and_reject_unknown_devices(capsys):
    from autosam.cli import predict, train

    args = train.build_parser().parse_args(["1", "3d", "unet", "0", "--device", "cuda:1"])
    assert args.device == "cuda:1"
    args = predict.build_parser().parse_args(["-i", "a", "-o", "b", "-d", "1", "-c", "3d", "--device", "cpu"])
    assert args.device == "cpu"
    with pytest.raises(SystemExit):
        train.build_parser().parse_args(["1", "3d", "unet", "0", "--device", "gpu"])
    assert "invalid device 'gpu'" in capsys.readouterr().err


def test_pick_device_names_the_missing_gpu_and_always_gives_an_index(monkeypatch):
    """A bare ``cuda`` becomes ``cuda:<LOCAL_RANK>`` under a launcher, else the current device:
    ``torch.cuda.set_device`` (run for real here) refuses a device without an index."""
    from autosam.training.run_support import pick_device
    from fake_cuda import FakeCuda

    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with FakeCuda(2):
        with pytest.raises(RuntimeError, match=r"--device cuda:2: only 2 CUDA device"):
            pick_device("cuda:2")
        assert pick_device("cuda:1") == torch.device("cuda", 1)
        assert pick_device("cuda") == torch.device("cuda", 0) == pick_device(None)
        torch.cuda.set_device(pick_device("cuda"))
        torch.cuda.set_device(1)
        assert pick_device("cuda") == torch.device("cuda", 1)
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert pick_device("cuda") == torch.device("cuda", 0)


def test_predict_folder_defaults_to_the_best_device(tmp_path, monkeypatch):
    import inspect

    from autosam.inference import predictor
    from autosam.utils.files import write_json
    from training_data import DATASET_JSON, tiny_plans, untrained_model

    assert inspect.signature(predictor.predict_folder).parameters["device"].default is None
    folder = tmp_path / "unet__autosamPlans__3d"
    folder.mkdir()
    plans = tiny_plans()
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", DATASET_JSON)
    untrained_model(plans, folder)
    seen = []
    monkeypatch.setattr("autosam.training.run_support.default_device", lambda: seen.append(1) or "cpu")
    model = predictor.load_trained_model(folder, ["all"])
    assert seen and model.ctx.device == torch.device("cpu")


def test_out_of_memory_reaches_the_user_with_a_hint(monkeypatch, capsys):
    from autosam.cli import train

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr("autosam.training.trainer.run_training", oom)
    assert train.main(["1", "3d", "unet", "0", "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "Tried to allocate 20.00 GiB" in err and "hint:" in err and "--device cpu" in err


def test_sliding_window_accumulates_on_the_cpu_when_the_device_is_full(caplog):
    from torch.overrides import TorchFunctionMode

    from autosam.inference.sliding_window import _accumulators

    class DeviceFull(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            dev = kwargs.get("device")
            if func in (torch.zeros, torch.Tensor.to) and dev is not None and torch.device(dev).type == "meta":
                raise torch.OutOfMemoryError("out of memory on meta")
            if func is torch.Tensor.to and any(isinstance(a, torch.device) and a.type == "meta" for a in args[1:]):
                raise torch.OutOfMemoryError("out of memory on meta")
            return func(*args, **kwargs)

    padded = torch.randn(1, 8, 8, 8)
    with caplog.at_level(logging.WARNING, logger="autosam.inference.sliding_window"), DeviceFull():
        logits_sum, weight_sum, source, acc = _accumulators(3, padded, torch.device("meta"))
    assert acc.type == "cpu" and logits_sum.shape == (3, 8, 8, 8) and weight_sum.device.type == "cpu"
    assert source is padded and "accumulating on the CPU" in caplog.text
    # when everything fits, all three live on the device
    logits_sum, weight_sum, source, acc = _accumulators(3, padded, torch.device("meta"))
    assert acc.type == "meta" and source.device.type == "meta" and weight_sum.device.type == "meta"


# ----------------------------------------------------------------------------- checkpoints
def _entry():
    from autosam.plugins import get_plugin_system

    return get_plugin_system().methods.entry("unet")


def test_compiled_network_saves_plain_weights_and_loads_both_ways(tmp_path):
    from autosam.training import checkpoint as ckpt_io

    torch.manual_seed(0)
    plain = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=True))
    compiled = torch.compile(plain)
    assert all(k.startswith("_orig_mod.") for k in compiled.state_dict())
    ckpt_io.save_checkpoint(tmp_path / "c.pth", method_entry=_entry(), options=_entry().obj.Options(), network=compiled, epoch=1,
                            num_epochs=1)
    ck = ckpt_io.load_checkpoint(tmp_path / "c.pth")
    assert not any("_orig_mod" in k for k in ck["network"])
    # a plain checkpoint into a compiled network, and prefixed weights into a plain one
    target = torch.compile(torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=True)))
    ckpt_io.restore_training_state(ck, network=target)
    assert torch.equal(target._orig_mod[0].weight, plain[0].weight)
    other = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.InstanceNorm3d(2, affine=True))
    ckpt_io.restore_training_state({"network": compiled.state_dict()}, network=other)
    assert torch.equal(other[0].weight, plain[0].weight)


def test_compiled_unet_checkpoint_predicts(tmp_path, monkeypatch):
    """A fold trained with --compile true (weights written with prefixes by another tool or an older
    version) loads for prediction."""
    from autosam.inference import predictor
    from autosam.training import checkpoint as ckpt_io
    from autosam.utils.files import write_json
    from training_data import DATASET_JSON, tiny_plans, untrained_model

    folder = tmp_path / "unet__autosamPlans__3d"
    folder.mkdir()
    plans = tiny_plans()
    plans.save(folder / "plans.json")
    write_json(folder / "dataset.json", DATASET_JSON)
    untrained_model(plans, folder, overrides={"compile": "true"})
    path = folder / "fold_all" / "checkpoint_final.pth"
    ck = ckpt_io.load_checkpoint(path)
    ck["network"] = {f"_orig_mod.{k}": v for k, v in ck["network"].items()}
    torch.save(ck, path)
    model = predictor.load_trained_model(folder, ["all"], device="cpu")
    assert model.ctx.options.compile is True
    probs = predictor.predict_preprocessed_case(model.method, model.folds, torch.zeros(1, 16, 32, 32), None, model.ctx,
                                                use_mirroring=False)
    assert probs.shape == (3, 16, 32, 32)


def test_rng_state_of_a_fake_gpu_round_trips():
    """Through torch.cuda's real get/set_rng_state on fake GPUs (their generators live on the CPU)."""
    from autosam.training import checkpoint as ckpt_io
    from fake_cuda import FakeCuda

    with FakeCuda(2):
        torch.cuda.manual_seed_all(3)
        state = ckpt_io.rng_state(torch.device("cuda", 1))
        first = torch.cuda.default_generators[1].initial_seed()
        torch.cuda.manual_seed_all(4)
        ckpt_io.set_rng_state(state, torch.device("cuda", 1))
        assert torch.equal(torch.cuda.get_rng_state(1), state["cuda"]) and first == 3


def test_a_failed_compile_is_reported_with_its_reason(monkeypatch, caplog):
    """suppress_errors keeps training going in eager mode; the fallback is a warning naming why."""
    import functools

    from autosam.training import run_support

    def failing_backend(graph, example_inputs):
        raise RuntimeError("no C compiler on this node (test)")

    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=failing_backend))
    monkeypatch.setattr(run_support, "COMPILE_FALLBACKS", [])
    caplog.set_level(logging.WARNING, logger="autosam.training.run_support")
    network = run_support.compile_network(torch.nn.Linear(3, 2))
    assert network(torch.ones(2, 3)).shape == (2, 2)  # ran eagerly
    assert len(run_support.COMPILE_FALLBACKS) == 1 and "no C compiler on this node" in run_support.COMPILE_FALLBACKS[0]
    assert "torch.compile failed and the network runs eagerly" in caplog.text and "no C compiler" in caplog.text


def test_rng_state_holds_only_the_training_device(monkeypatch):
    from autosam.training import checkpoint as ckpt_io

    assert "cuda" not in ckpt_io.rng_state(torch.device("cpu"))
    set_calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: torch.tensor([7, int(torch.device(device).index)]))
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: set_calls.append((state.tolist(), str(device))))
    state = ckpt_io.rng_state(torch.device("cuda", 1))
    assert state["cuda"].tolist() == [7, 1]
    # trained on cuda:1 of 2 GPUs, resumed where one GPU is visible: its state goes to cuda:0
    ckpt_io.set_rng_state(state, torch.device("cuda", 0))
    assert set_calls == [([7, 1], "cuda:0")]
    # older checkpoints hold every GPU's state: the one of the device's index, none when missing
    set_calls.clear()
    old = dict(state, cuda=[torch.tensor([1]), torch.tensor([2])])
    ckpt_io.set_rng_state(old, torch.device("cuda", 1))
    ckpt_io.set_rng_state(old, torch.device("cuda", 5))
    ckpt_io.set_rng_state(old, torch.device("cpu"))  # --val on the CPU of a GPU-trained fold
    assert set_calls == [([2], "cuda:1")]


@pytest.mark.parametrize("device, option, compiled", [("cuda", None, True), ("cuda", False, False), ("cpu", None, False),
                                                      ("cpu", True, False)])
def test_unet_compiles_by_default_on_cuda_only_with_an_eager_fallback(device, option, compiled):
    import torch._dynamo

    from autosam.plugins import get_method
    from autosam.training.method import MethodContext
    from training_data import DATASET_JSON, tiny_plans

    method = get_method("unet")
    plans = tiny_plans()
    opts = method.make_options({}, {} if option is None else {"compile": str(option).lower()})
    ctx = MethodContext(plans, plans.configuration("3d"), DATASET_JSON, opts, torch.device(device), 1, 3)
    network = method.build_network(ctx)  # built on the CPU; torch.compile wraps it lazily
    assert hasattr(network, "_orig_mod") == compiled
    if compiled:
        assert torch._dynamo.config.suppress_errors  # compiler failures run the module eagerly
