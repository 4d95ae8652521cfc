"""M-SAM mechanism tests on the tiny 3D backbone."""
import torch

from autosam.plugins import get_method
from autosam.sam.lora import LoRAQKVLinear
from autosam.training.method import MethodContext
from autosam_plugins.msam.mea import MaskEnhancedAdapter
from autosam_plugins.msam.refinement import refine_with_clicks, sample_clicks
from test_medlsam_plugin import make_ctx


def _net(**over):
    m = get_method("msam")
    base = make_ctx(get_method("medlsam"))  # plans/configuration of a 3-class toy dataset
    opts = m.make_options({}, {"backbone": "tiny3d", **over})
    ctx = MethodContext(plans=base.plans, configuration=base.configuration, dataset_json={}, options=opts,
                        device=torch.device("cpu"), num_input_channels=1, num_classes=3, num_epochs=2)
    return m, ctx, m.build_network(ctx)


def test_mea_output_depends_on_mask_input():
    torch.manual_seed(0)
    mea = MaskEnhancedAdapter(48, heads=6, zero_init=False).eval()
    img = torch.randn(1, 48, 4, 4, 4)
    m1, m2 = torch.randn(1, 48, 4, 4, 4), torch.randn(1, 48, 4, 4, 4)
    assert not torch.allclose(mea(img, m1), mea(img, m2))


def test_zero_initialised_mea_starts_as_identity_and_learns_to_use_the_mask():
    torch.manual_seed(0)
    mea = MaskEnhancedAdapter(48, heads=6)
    img = torch.nn.functional.layer_norm(torch.randn(2, 4, 4, 4, 48), (48,)).permute(0, 4, 1, 2, 3)  # like the neck's output
    m1, m2 = torch.randn(2, 48, 4, 4, 4), torch.randn(2, 48, 4, 4, 4)
    assert torch.allclose(mea(img, m1), img, atol=1e-5) and torch.allclose(mea(img, m2), img, atol=1e-5)
    opt = torch.optim.SGD(mea.parameters(), lr=0.1)
    for _ in range(3):  # the mask path opens under gradient (zeroed output layers are not a dead end)
        opt.zero_grad()
        ((mea(img, m1) - img - m1) ** 2).mean().backward()
        opt.step()
    assert not torch.allclose(mea(img, m1), mea(img, m2), atol=1e-3)


def test_only_lora_mea_prompt_and_decoder_train():
    torch.manual_seed(0)
    _, _, net = _net(freeze_encoder="true")  # the paper's recipe (the default with pretrained weights)
    for name, p in net.named_parameters():
        expected = ("lora_" in name or name.startswith("mea.") or name.startswith("backbone.prompt_encoder")
                    or name.startswith("backbone.mask_decoder"))
        assert p.requires_grad == expected, name
    assert any(isinstance(mod, LoRAQKVLinear) for mod in net.backbone.image_encoder.modules())
    assert net.backbone.mask_decoder.num_mask_tokens == 2  # one per foreground class


def test_random_backbone_trains_whole_encoder_and_decoder_at_full_lr():
    m, ctx, net = _net()  # tiny3d: random weights, nothing pretrained to protect
    assert all(p.requires_grad for p in net.backbone.image_encoder.parameters())
    opt, _ = m.configure_optimizers(net, ctx)
    assert [g["lr"] for g in opt.param_groups] == [ctx.options.lr, ctx.options.lr]
    net.backbone.checkpoint_path = "weights.pth"  # as if loaded from a checkpoint: the paper's 8e-5
    assert m.configure_optimizers(net, ctx)[0].param_groups[1]["lr"] == 8e-5


def test_refinement_runs_configured_iterations_and_clicks_lie_in_error_region():
    torch.manual_seed(0)
    _, _, net = _net()
    x = torch.randn(2, 1, 32, 32, 32)
    target = torch.zeros(2, 32, 32, 32, dtype=torch.long)
    target[:, 8:20, 8:20, 8:20] = 1
    target[1, 22:28, 4:10, 20:30] = 2
    record = []
    outs = refine_with_clicks(net, x, target, iterations=4, record=record)
    assert len(outs) == 4 and len(record) == 4
    assert outs[0].shape == (2, 3, 32, 32, 32)
    for it, (coords, labels, prev) in enumerate(record):
        for i in range(2):
            if labels[i, 0] < 0:
                continue
            z, y, xx = coords[i, 0].long().tolist()
            if prev is None:
                assert target[i, z, y, xx] > 0  # first click from the foreground
            else:
                assert prev[i, z, y, xx] != target[i, z, y, xx]  # later clicks in the error region
            assert labels[i, 0] == int(target[i, z, y, xx] > 0)


def test_sample_clicks_no_error_gives_padding():
    t = torch.zeros(1, 4, 4, 4, dtype=torch.long)
    c, lab = sample_clicks(t.clone(), t)
    assert lab.item() == -1


def test_automatic_mode_needs_no_label_and_mea_ablation_changes_network():
    torch.manual_seed(0)
    m, ctx, net = _net()
    x = torch.randn(1, 1, 32, 32, 32)
    with torch.no_grad():
        out = m.predict_logits(net.eval(), x, ctx)
    assert out.shape == (1, 3, 32, 32, 32) and torch.all(out[:, 0] == 0)
    _, _, net2 = _net(use_mea="false")
    assert net2.mea is None and net.mea is not None


def test_one_training_step_reduces_loss_on_same_batch():
    torch.manual_seed(0)
    m, ctx, net = _net(train_iterations="2", click_training_fraction="1.0")
    opt, _ = m.configure_optimizers(net, ctx)
    loss_fn = m.build_loss(ctx)
    x = torch.randn(1, 1, 32, 32, 32)
    t = torch.zeros(1, 1, 32, 32, 32, dtype=torch.long)
    t[:, :, 10:22, 10:22, 10:22] = 1
    x[t.bool()] += 2
    batch = {"data": x, "target": t}
    losses = []
    for _ in range(4):
        torch.manual_seed(1)
        r = m.train_step(net, batch, loss_fn, ctx)
        opt.zero_grad()
        r.loss.backward()
        opt.step()
        losses.append(float(r.loss))
    assert losses[-1] < losses[0]


def test_zero_decoder_steps_are_refused_not_an_empty_prediction():
    """auto_iterations 0 used to return the all-zero initial mask (every voxel background, Dice 0 on
    real data) without a word; 1 is one decoder step without mask feedback, the real ablation."""
    import pytest

    for name in ("auto_iterations", "train_iterations"):
        with pytest.raises(ValueError, match=f"--{name.replace('_', '-')} must be at least 1"):
            _net(**{name: "0"})
    torch.manual_seed(0)
    m, ctx, net = _net(auto_iterations="1")
    with torch.no_grad():
        out = m.predict_logits(net.eval(), torch.randn(1, 1, 32, 32, 32), ctx)
        assert out[:, 1:].abs().sum() > 0  # the decoder ran: not the constant initial mask
        with pytest.raises(ValueError, match="at least one mask-decoder step"):
            net(torch.randn(1, 1, 32, 32, 32), iterations=0)
