"""Distributed training (DDP over gloo on the CPU, 2 processes) and prediction sharding.

The multi-process tests start their ranks with ``torch.distributed.run`` (``--standalone``: a free
port) or through ``autosam_train --num-gpus 2 --device cpu``; each rank runs one thread."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from autosam.method import MethodContext, rank_batch_sizes, rank_foreground_fraction
from autosam.training import distributed
from training_data import NAME, make_tiny_preprocessed, tiny_plans

TESTS = Path(__file__).resolve().parent
METHODS = ("unet", "sautomed", "masksam", "msam", "medlsam")


def _env(dirs: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", AUTOSAM_DDP_TIMEOUT_MINUTES="5")
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS), *filter(None, [env.get("PYTHONPATH")])])
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    for name, folder in (dirs or {}).items():
        env[f"AUTOSAM_{name.upper()}"] = str(folder)
    return env


def _torchrun(args: list[str], env: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)


def _command(module: str, args: list[str], env: dict, timeout: int = 400) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], env=env, capture_output=True, text=True, timeout=timeout)


# ----------------------------------------------------------------------------------- batch split, context
def test_global_batch_split_across_ranks():
    assert rank_batch_sizes(2, 1) == [2]
    assert rank_batch_sizes(2, 2) == [1, 1]
    assert rank_batch_sizes(5, 2) == [3, 2]
    assert rank_batch_sizes(7, 4) == [2, 2, 2, 1]
    assert rank_batch_sizes(1, 3) == [1, 1, 1]  # at least one sample per rank
    with pytest.raises(ValueError, match="world_size"):
        rank_batch_sizes(2, 0)


@pytest.mark.parametrize("global_batch,world", [(2, 1), (2, 2), (4, 2), (5, 2), (7, 3), (12, 4)])
def test_foreground_samples_of_the_global_batch_are_kept(global_batch, world):
    """Each rank's loader forces foreground in its last round(b * fraction) samples; over the ranks
    that is as many samples as one process with the whole batch forces."""
    single = global_batch - round(global_batch * (1 - 0.33))
    sizes = rank_batch_sizes(global_batch, world)
    forced = 0
    for rank, b in enumerate(sizes):
        fraction = rank_foreground_fraction(global_batch, world, rank, 0.33)
        forced += b - round(b * (1 - fraction))
    assert forced == single


def test_method_context_knows_its_rank():
    plans = tiny_plans(batch_size=5)
    cfg = plans.configuration("3d")
    kw = dict(plans=plans, configuration=cfg, dataset_json={}, options=None, device=torch.device("cpu"),
              num_input_channels=1, num_classes=3, seed=7)
    single = MethodContext(**kw)
    assert single.rank == 0 and single.world_size == 1 and single.is_main_process
    assert single.rank_batch_size == 5 and single.loader_seed == 7
    ranks = [MethodContext(**kw, rank=r, world_size=2) for r in range(2)]
    assert [c.rank_batch_size for c in ranks] == [3, 2]
    assert [c.is_main_process for c in ranks] == [True, False]
    assert ranks[0].loader_seed == 7 and ranks[1].loader_seed != 7
    assert ranks[1].split_batch(4) == 2


def test_the_former_module_re_exports_the_contract():
    import autosam.method as contract
    import autosam.training.method as former

    assert former.Method is contract.Method and former.MethodContext is contract.MethodContext
    assert former.StepResult is contract.StepResult and former.build_options is contract.build_options


def test_declared_unused_parameters():
    """msam and medlsam leave parameters without gradient in a step (found by training them under
    DDP: the tests below fail with DDP's "Expected to have finished reduction" otherwise)."""
    from autosam.plugins import get_method

    assert {m: get_method(m).ddp_find_unused_parameters for m in METHODS} == {
        "unet": False, "sautomed": False, "masksam": False, "msam": True, "medlsam": True}


# ----------------------------------------------------------------------------------- launcher environment
def test_launcher_environment_detection():
    assert distributed.launcher_env({}) is None
    env = distributed.launcher_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "4"})
    assert env == distributed.LaunchEnv(3, 8, 1, 4) and not env.is_main_process
    with pytest.raises(RuntimeError, match="inconsistent"):
        distributed.launcher_env({"RANK": "2", "WORLD_SIZE": "2"})
    with pytest.raises(RuntimeError, match="not integers"):
        distributed.launcher_env({"RANK": "a", "WORLD_SIZE": "2"})
    assert distributed.rank_device("cpu", env) == torch.device("cpu")
    with pytest.raises(RuntimeError, match="CUDA_VISIBLE_DEVICES"):
        distributed.rank_device("cuda:1", env)
    with pytest.raises(RuntimeError, match="launcher started 4"):
        distributed.check_joined(2, env)
    distributed.check_joined(None, env)


def test_helpers_without_process_group():
    assert not distributed.is_initialized() and distributed.get_world_size() == 1 and distributed.is_main_process()
    t = torch.tensor([1.0, 2.0])
    assert distributed.all_reduce_sum(t) is t and distributed.differentiable_all_reduce_sum(t) is t
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.all_true(torch.tensor(True)) and not distributed.all_true(torch.tensor([True, False]))
    distributed.barrier()


def test_num_gpus_needs_cuda_or_an_explicit_cpu(capsys, monkeypatch):
    from autosam.cli.train import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for key in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert main(["990", "3d", "unet", "0", "-num_gpus", "2"]) == 1
    assert "add --device cpu" in capsys.readouterr().err
    assert main(["990", "3d", "unet", "0", "--num-gpus", "2", "--device", "cuda"]) == 1
    assert "only 0 CUDA device(s) are visible" in capsys.readouterr().err
    assert main(["990", "3d", "unet", "0", "--num-gpus", "2", "--device", "cuda:1"]) == 1
    assert "CUDA_VISIBLE_DEVICES" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["990", "3d", "unet", "0", "--num-gpus", "0"])
    assert "at least 1" in capsys.readouterr().err


def test_ddp_prefixes_are_stripped_when_loading():
    from autosam.training.checkpoint import strip_compile_prefix

    state = {"module.a.weight": 1, "module.b._orig_mod.bias": 2}
    assert strip_compile_prefix(state) == {"a.weight": 1, "b.bias": 2}
    assert strip_compile_prefix({"module.a": 1, "other": 2}) == {"module.a": 1, "other": 2}  # a real submodule name


# ----------------------------------------------------------------------------------- prediction sharding
def _cases(n: int):
    return [SimpleNamespace(identifier=f"case_{i:03d}") for i in reversed(range(n))]


def test_parts_cover_every_case_once(tmp_path):
    from autosam.inference.predictor import select_cases

    cases = _cases(7)
    parts = [[c.identifier for c in select_cases(cases, tmp_path, ".nii.gz", num_parts=3, part_id=k)] for k in range(3)]
    assert parts[0] == ["case_000", "case_003", "case_006"]  # every 3rd case of the sorted list, as nnU-Net
    assert sorted(sum(parts, [])) == sorted(c.identifier for c in cases)
    with pytest.raises(ValueError, match="part_id"):
        select_cases(cases, tmp_path, ".nii.gz", num_parts=3, part_id=3)


def test_continue_prediction_skips_complete_outputs(tmp_path):
    from autosam.inference.predictor import select_cases

    cases = _cases(3)
    (tmp_path / "case_000.nii.gz").write_bytes(b"x")
    (tmp_path / "case_001.nii.gz").write_bytes(b"x")
    (tmp_path / "case_001.npz").write_bytes(b"x")
    (tmp_path / "case_001.json").write_text("{}")
    (tmp_path / ".case_002.nii.gz.k3j9.partial.nii.gz").write_bytes(b"x")  # an interrupted atomic write
    todo = lambda **kw: [c.identifier for c in select_cases(cases, tmp_path, ".nii.gz", continue_prediction=True, **kw)]  # noqa: E731
    assert todo() == ["case_002"]
    assert todo(save_probabilities=True) == ["case_000", "case_002"]  # the probabilities are part of the output
    assert len(select_cases(cases, tmp_path, ".nii.gz")) == 3  # without --continue_prediction: all


def test_prediction_cli_parts_and_continue(tmp_path, capsys):
    from autosam.cli.predict_modelfolder import main
    from model_helpers import tiny_model_folder, write_images

    model = tiny_model_folder(tmp_path / "results", folds=(0,))
    write_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    base = ["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model), "-f", "0", "--device", "cpu",
            "--disable_tta", "--quiet"]
    outputs = lambda: sorted(p.name for p in out.glob("*.nii.gz"))  # noqa: E731
    assert main(base + ["-num_parts", "2", "-part_id", "1"]) == 0
    assert outputs() == ["img_001.nii.gz"]
    assert main(base + ["--num_parts", "2", "--part_id", "0"]) == 0
    assert outputs() == ["img_000.nii.gz", "img_001.nii.gz", "img_002.nii.gz"]
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    (out / "img_002.nii.gz").unlink()
    capsys.readouterr()
    assert main(base + ["--continue_prediction"]) == 0
    assert "1 prediction(s) written" in capsys.readouterr().out
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.nii.gz")}
    assert after["img_000.nii.gz"] == before["img_000.nii.gz"] and after["img_001.nii.gz"] == before["img_001.nii.gz"]
    with pytest.raises(SystemExit):
        main(base + ["-num_parts", "2", "-part_id", "2"])
    assert "-part_id: must be in 0 .. 1" in capsys.readouterr().err


@pytest.mark.slow
def test_prediction_over_two_processes(tmp_path):
    from model_helpers import tiny_model_folder, write_images

    model = tiny_model_folder(tmp_path / "results", folds=(0,))
    write_images(tmp_path / "in", n=3)
    out = tmp_path / "out"
    proc = _command("autosam.cli.predict_modelfolder",
                    ["-i", str(tmp_path / "in"), "-o", str(out), "-m", str(model), "-f", "0", "--device", "cpu",
                     "--disable_tta", "--quiet", "--num-gpus", "2"], _env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["img_000.nii.gz", "img_001.nii.gz", "img_002.nii.gz"]
    counts = sorted(int(n) for n in re.findall(r"(\d+) prediction\(s\) written", proc.stdout))
    assert counts == [1, 2]  # one process per share of the cases


# ----------------------------------------------------------------------------------- DDP training
@pytest.mark.slow
def test_ddp_steps_equal_one_process_with_the_global_batch(tmp_path):
    """Two SGD steps of unet (batch Dice, deep supervision) on 2 ranks x 2 samples give the losses,
    gradients and weights of one process with the 4 samples."""
    import ddp_worker

    proc = _torchrun(["ddp_worker", "steps", str(tmp_path / "steps.pt")], _env())
    assert proc.returncode == 0, proc.stderr[-4000:]
    got = torch.load(tmp_path / "steps.pt", weights_only=False)
    ref = ddp_worker.run_steps(0, 1, ddp_worker.single_step)
    assert got["losses"] == pytest.approx(ref["losses"], rel=1e-5)
    assert set(ref["grads"]) <= set(got["grads"])  # DDP also gives the zero-weight head a (zero) gradient
    for name, grad in ref["grads"].items():
        torch.testing.assert_close(got["grads"][name], grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, value in ref["weights"].items():
        torch.testing.assert_close(got["weights"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    # what rank 0 computed alone (after_training) reaches the other rank: weights, bool buffers, objects
    shared = [torch.load(tmp_path / f"steps.pt.rank{r}.pt", weights_only=False) for r in range(2)]
    expected = ddp_worker.Stateful(0).state_dict()
    for rank_result in shared:
        assert rank_result["object"]["rank"] == 0 and rank_result["object"]["tensor"].tolist() == [0, 1, 2]
        for name, value in expected.items():
            assert torch.equal(rank_result["state"][name], value), name


def _log_text(fold_dir: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(fold_dir.glob("training_log_*.txt")))


@pytest.mark.slow
def test_ddp_training_writes_once_resumes_and_shares_checkpoints(autosam_dirs):
    """One epoch in one process, then ``--c`` under DDP (the single-process checkpoint resumes on 2
    ranks; rank 0 alone writes; the validation is split and evaluated once), then ``--c`` in one
    process again (the DDP checkpoint resumes there)."""
    from autosam.training import checkpoint as ckpt_io
    from autosam.training.trainer import run_training
    from autosam.utils.files import read_json

    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    kw = dict(iters_per_epoch=2, device="cpu", num_workers=0)
    fold_dir = run_training(NAME, "3d", "unet", 0, epochs=1, validate=False, **kw)
    for log in fold_dir.glob("training_log_*.txt"):
        log.unlink()
    (fold_dir / "metadata.json").unlink()

    proc = _command("autosam.cli.train", [NAME, "3d", "unet", "0", "--epochs", "2", "--iters-per-epoch", "2",
                                          "--device", "cpu", "--num-gpus", "2", "--num-workers", "0", "--c"],
                    _env(autosam_dirs))
    assert proc.returncode == 0, proc.stderr[-4000:]
    logs = list(fold_dir.glob("training_log_*.txt"))
    assert len(logs) == 1
    text = logs[0].read_text()
    assert text.count("training Dataset990_Tiny fold 0") == 1 and text.count("epoch 2/2:") == 1
    assert "resuming from epoch 1" in text and "per rank 1/1" in text
    assert text.count("validation: predicted") == 1  # rank 0 predicted one of the 2 validation cases
    assert proc.stdout.count("results: ") == 1  # rank 0 reports, the other rank stays quiet
    assert read_json(fold_dir / "metadata.json")["world_size"] == 2
    ck = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")
    assert ck["epoch"] == 2 and len(ck["logger"]["train_loss"]) == 2
    assert not any(k.startswith("module.") for k in ck["network"])
    assert not (fold_dir / "checkpoint_latest.pth").exists()
    assert not [p for p in fold_dir.rglob("*") if ".tmp" in p.name or p.name.startswith(".")]
    summary = read_json(fold_dir / "validation" / "summary.json")  # each rank predicted one case, rank 0 evaluated
    assert sorted(Path(c["prediction_file"]).name for c in summary["metric_per_case"]) == \
        ["case_000.nii.gz", "case_001.nii.gz"]

    for log in fold_dir.glob("training_log_*.txt"):
        log.unlink()
    run_training(NAME, "3d", "unet", 0, epochs=3, resume=True, validate=False, **kw)
    text = _log_text(fold_dir)
    assert "resuming from epoch 2" in text and re.findall(r"epoch (\d+)/3:", text) == ["3"]
    final = ckpt_io.load_checkpoint(fold_dir / "checkpoint_final.pth")
    assert final["epoch"] == 3 and final["logger"]["train_loss"][:2] == ck["logger"]["train_loss"]


@pytest.fixture(scope="module")
def methods_under_ddp(tmp_path_factory):
    """Every method trains one epoch of two iterations on 2 ranks (one launch for all methods)."""
    root = tmp_path_factory.mktemp("ddp_methods")
    dirs = {k: root / k for k in ("raw", "preprocessed", "results")}
    for folder in dirs.values():
        folder.mkdir()
    make_tiny_preprocessed(dirs["preprocessed"], dirs["raw"], num_cases=4)
    out = root / "done.json"
    proc = _torchrun(["ddp_worker", "methods", str(out), *METHODS], _env(dirs), timeout=500)
    done = json.loads(out.read_text()) if out.is_file() else {}
    return done, proc


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_under_ddp(method, methods_under_ddp):
    done, proc = methods_under_ddp
    assert method in done, f"{method} did not finish under DDP:\n{proc.stderr[-4000:]}"
    row = done[method]
    assert row["epoch"] == 1 and len(row["train_loss"]) == 1 and row["train_loss"][0] == row["train_loss"][0]
    assert len(row["logs"]) == 1  # rank 0 alone writes the log


# ----------------------------------------------------------------------------------- issue 24: DDP on GPUs
def test_masksam_heads_take_part_without_any_segment():
    """DDP without find_unused_parameters needs every trainable parameter in every step's graph: a
    masksam batch without any segment (no matched query) still reaches the mask, auxiliary and box heads."""
    from autosam.plugins import get_method
    from ddp_worker import fixed_batch
    from test_device_guard import TINY_OPTIONS

    method = get_method("masksam")
    plans = tiny_plans((4, 32, 32), batch_size=1)
    cfg = plans.configuration("3d")
    options = method.make_options(cfg.methods.get("masksam"), TINY_OPTIONS["masksam"])
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=options, device=torch.device("cpu"),
                        num_input_channels=1, num_classes=plans.num_classes)
    assert not method.ddp_find_unused_parameters
    torch.manual_seed(0)
    network, loss_fn = method.build_network(ctx), method.build_loss(ctx)
    data, seg = fixed_batch(1)
    data, seg = data[:, :, :4], seg[:, :, :4]
    trainable = {n for n, p in network.named_parameters() if p.requires_grad}

    def reached(target) -> set:
        network.zero_grad(set_to_none=True)
        method.train_step(network, {"data": data, "target": [target]}, loss_fn, ctx).loss.backward()
        return {n for n, p in network.named_parameters() if p.grad is not None}

    assert reached(seg) == trainable
    assert reached(torch.zeros_like(seg)) == trainable


@pytest.mark.slow
def test_ddp_masksam_with_a_rank_without_segments(tmp_path):
    """Two DDP steps of masksam where rank 1's batch holds no segment complete on both ranks."""
    out = tmp_path / "masksam.ok"
    proc = _torchrun(["ddp_worker", "masksam_without_targets", str(out)], dict(_env(), AUTOSAM_DDP_TIMEOUT_MINUTES="2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.read_text() == "ok"


@pytest.mark.slow
def test_ddp_trainer_on_two_kinds_of_gpu(autosam_dirs, tmp_path):
    """The trainer under DDP on two fake GPUs, an H100 (rank 0) and a T4 without native bf16 (rank 1):

    - one precision for the job: fp16 with a GradScaler on both ranks (bf16 on rank 0 alone would
      average scaled with unscaled gradients);
    - identical initial weights, different random streams per rank (seed + rank after the build);
    - the validation summary covers the case rank 1 wrote although rank 0's first listing missed it;
    - ``--c`` where rank 1 reads another epoch than rank 0 stops on both ranks, naming both epochs;
    - an ``after_training`` that fails on rank 0 stops rank 1 at once, not after the DDP timeout."""
    make_tiny_preprocessed(autosam_dirs["preprocessed"], autosam_dirs["raw"], num_cases=4)
    out = tmp_path / "checks"
    proc = _torchrun(["fake_cuda", "--count", "2", "--card", "h100,t4", "-m", "ddp_worker", "trainer_checks", str(out)],
                     _env(autosam_dirs))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(out.with_name(f"checks.rank{r}.json").read_text()) for r in range(2)]
    for seen in ranks:
        assert seen["step"]["autocast"] == [True, "torch.float16"] and seen["scaler"], seen
        assert "disagree on the epoch to resume from" in seen["resume_error"] and "rank 1: 0" in seen["resume_error"]
        assert seen["after_training_seconds"] < 120  # the DDP timeout of _env is 5 minutes
    assert ranks[0]["initial_weights"] == ranks[1]["initial_weights"]
    assert ranks[0]["step"]["random"] != ranks[1]["step"]["random"]
    assert ranks[0]["stale_listing_seen"] and ranks[0]["summary_cases"] == ["case_000.nii.gz", "case_001.nii.gz"]
    assert ranks[0]["after_training_error"] == "ValueError: after_training failed on purpose"
    assert ranks[1]["after_training_error"] == ("RuntimeError: rank 0 failed during after_training: ValueError: "
                                                "after_training failed on purpose")


def test_leaving_the_process_group_waits_for_the_others_only_after_a_normal_end(monkeypatch):
    """After a normal end every rank meets at a barrier before the group is destroyed (no rank tears
    its connections down while another still uses them); a rank leaving on an error must not wait
    for ranks that may never arrive."""
    calls = []
    monkeypatch.setattr(distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(distributed.dist, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(distributed.dist, "destroy_process_group", lambda: calls.append("destroy"))
    distributed.destroy_process_group()
    assert calls == ["barrier", "destroy"]
    calls.clear()
    distributed.destroy_process_group(wait_for_others=False)
    assert calls == ["destroy"]
