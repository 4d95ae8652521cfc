"""What reaches a SAM encoder, and whether the official checkpoints of each paper load.

- the official key layouts (names and shapes) of SAM ViT-B (segment-anything's own ``Sam``, the
  module Meta's ``sam_vit_b_01ec64.pth`` is the state dict of), MedSAM (the same layout) and
  SAM-Med3D ``vit_b_ori`` (its code's module names; ``sam_med3d_turbo.pth``) against the backbones
  built here, at the weights' size and at the smaller sizes the planner picks;
- each backbone's input range: MedSAM ViT-B and LiteMedSAM take ``[0, 1]`` (MedSAM feeds its
  min-max scaled image to the image encoder directly), SAM ViT-B its RGB pixel mean/std of 0-255,
  SAM-Med3D a per-volume z-score.
No weights are downloaded: the layouts are built on the meta device.
"""
from __future__ import annotations

import pytest
import torch

from autosam.sam.backbones import build_backbone
from autosam.sam.checkpoints import resize_position_tensors


def _layout(module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _official_sam_vit_b_state() -> dict[str, torch.Tensor]:
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        return sam_model_registry["vit_b"]().state_dict()


@pytest.mark.parametrize("name", ["sam_vit_b", "medsam_vit_b"])
@pytest.mark.parametrize("size", [1024, 256])
def test_official_sam_vit_b_layout_loads(name, size):
    """Meta's sam_vit_b_01ec64.pth and MedSAM's medsam_vit_b.pth are state dicts of
    segment-anything's ``Sam`` (vit_b; its pixel mean/std buffers are not persistent): every key and
    shape must match our backbone, after the position tensors are resized to a smaller input."""
    official = _official_sam_vit_b_state()
    with torch.device("meta"):
        ours = build_backbone(name, input_size=size, allow_random_init=True)
    assert len(official) == 314
    assert set(official) == set(ours.state_dict())
    resized = resize_position_tensors(official, ours) if size != 1024 else official
    want = _layout(ours)
    wrong = {k: (tuple(v.shape), want[k]) for k, v in resized.items() if tuple(v.shape) != want[k]}
    assert not wrong
    if size != 1024:  # only the position tensors differ before the resize
        changed = sorted(k for k, v in official.items() if tuple(v.shape) != want[k])
        assert changed and all(k.endswith("pos_embed") or ".rel_pos_" in k for k in changed)


#: SAM-Med3D ``vit_b_ori`` (``sam_med3d_turbo.pth``): module names and shapes of its official code
#: (ImageEncoderViT3D, PromptEncoder3D with a 3 x 128 Fourier matrix and [sin, cos, sin], two point
#: embeddings, MaskDecoder3D with 384-d tokens and 384 -> 96 -> 48 upscaling).
SAM_MED3D_LAYOUT = {
    "image_encoder.pos_embed": (1, 8, 8, 8, 768),
    "image_encoder.patch_embed.proj.weight": (768, 1, 16, 16, 16),
    "image_encoder.blocks.0.attn.rel_pos_d": (27, 64),
    "image_encoder.blocks.2.attn.rel_pos_d": (15, 64),
    "image_encoder.blocks.11.attn.rel_pos_w": (15, 64),
    "image_encoder.blocks.11.attn.qkv.weight": (2304, 768),
    "image_encoder.blocks.11.mlp.lin2.weight": (768, 3072),
    "image_encoder.neck.0.weight": (384, 768, 1, 1, 1),
    "image_encoder.neck.1.weight": (384,),
    "image_encoder.neck.2.weight": (384, 384, 3, 3, 3),
    "image_encoder.neck.3.bias": (384,),
    "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix": (3, 128),
    "prompt_encoder.point_embeddings.0.weight": (1, 384),
    "prompt_encoder.point_embeddings.1.weight": (1, 384),
    "prompt_encoder.not_a_point_embed.weight": (1, 384),
    "prompt_encoder.mask_downscaling.0.weight": (4, 1, 2, 2, 2),
    "prompt_encoder.mask_downscaling.6.weight": (384, 16, 1, 1, 1),
    "prompt_encoder.no_mask_embed.weight": (1, 384),
    "mask_decoder.transformer.layers.1.cross_attn_token_to_image.q_proj.weight": (192, 384),
    "mask_decoder.transformer.final_attn_token_to_image.out_proj.weight": (384, 192),
    "mask_decoder.iou_token.weight": (1, 384),
    "mask_decoder.mask_tokens.weight": (4, 384),
    "mask_decoder.output_upscaling.0.weight": (384, 96, 2, 2, 2),
    "mask_decoder.output_upscaling.3.weight": (96, 48, 2, 2, 2),
    "mask_decoder.output_hypernetworks_mlps.3.layers.2.weight": (48, 384),
    "mask_decoder.iou_prediction_head.layers.2.weight": (4, 256),
}


def test_sam_med3d_official_layout():
    with torch.device("meta"):
        ours = build_backbone("sam_med3d", allow_random_init=True)
    got = _layout(ours)
    assert {k: got.get(k) for k in SAM_MED3D_LAYOUT} == SAM_MED3D_LAYOUT
    assert "prompt_encoder.point_embeddings.2.weight" not in got  # no box corners in SAM-Med3D
    assert len([k for k in got if k.startswith("image_encoder.blocks.")]) == 12 * 15
    assert all(k.split(".")[0] in ("image_encoder", "prompt_encoder", "mask_decoder") for k in got)


def test_each_backbone_gets_the_input_range_it_was_trained_on():
    """A z-scored MR slice (what preprocessing hands the methods) must reach MedSAM and LiteMedSAM
    in [0, 1] and SAM ViT-B as (x255 - mean) / std; before ``medsam_vit_b`` existed, MedSAM's
    weights could only be loaded as ``sam_vit_b`` and got SAM's pixel statistics."""
    torch.manual_seed(0)
    mr = torch.randn(2, 1, 40, 56) * 1.0 + 0.1  # z-score units, as ZScoreNormalization leaves them
    lo, hi = {}, {}
    for name in ("medsam_vit_b", "sam_vit_b", "litemedsam"):
        bb = build_backbone(name, input_size=64, allow_random_init=True)
        x = bb.prepare_slices(mr)
        assert x.shape == (2, 3, 64, 64)
        lo[name], hi[name] = float(x.min()), float(x.max())
    assert (lo["medsam_vit_b"], hi["medsam_vit_b"]) == pytest.approx((0.0, 1.0))
    assert (lo["litemedsam"], hi["litemedsam"]) == pytest.approx((0.0, 1.0))
    assert lo["sam_vit_b"] == pytest.approx(-123.675 / 58.395, abs=1e-3)
    assert hi["sam_vit_b"] == pytest.approx((255 - 103.53) / 57.375, abs=1e-3)
    vol = build_backbone("tiny3d", allow_random_init=True).prepare_volume(torch.randn(1, 1, 20, 30, 30) * 3 + 5)
    assert float(vol.mean()) == pytest.approx(0.0, abs=1e-4) and float(vol.std()) == pytest.approx(1.0, abs=1e-3)


def test_ct_soft_tissue_window_survives_preprocessing():
    """HU -160 and 240 (MedSAM's W400/L40) go through CTNormalization to exactly the window returned;
    an MR channel has no CT window."""
    import numpy as np

    from autosam.preprocessing.normalization import normalize_channel
    from autosam.sam.intensity import ct_window_in_normalised_units

    props = {"mean": 50.0, "std": 100.0, "percentile_00_5": -1000.0, "percentile_99_5": 1500.0}
    lo, hi = ct_window_in_normalised_units("CTNormalization", props)
    z = normalize_channel(np.array([[[-160.0, 240.0, -3000.0]]], dtype=np.float32), "CTNormalization", props)
    assert (lo, hi) == pytest.approx((float(z[0, 0, 0]), float(z[0, 0, 1])))
    assert float(z[0, 0, 2]) < lo  # air stays below the window
    narrow = dict(props, percentile_99_5=100.0)  # data clipped inside the window: the window follows the clip
    assert ct_window_in_normalised_units("CTNormalization", narrow)[1] == pytest.approx(0.5)
    assert ct_window_in_normalised_units("ZScoreNormalization", props) is None
    assert ct_window_in_normalised_units("CTNormalization", None) is None


def _ct_ctx(method_name: str, options: dict):
    """A context whose plans say channel 0 is CT (CTNormalization, foreground mean 50 HU, std 100)."""
    from autosam.plugins import get_plugin_system
    from autosam.training.method import MethodContext
    from training_data import tiny_plans

    plans = tiny_plans()
    cfg = plans.configurations["3d"]
    cfg.normalization_schemes = ["CTNormalization"]
    plans.foreground_intensity_properties_per_channel = {
        "0": {"mean": 50.0, "std": 100.0, "percentile_00_5": -1000.0, "percentile_99_5": 1500.0}}
    method = get_plugin_system().methods.entry(method_name).obj
    opts = method.make_options({}, {"backbone": "tiny", "allow_random_init": "true", **options})
    ctx = MethodContext(plans=plans, configuration=cfg, dataset_json={}, options=opts, device=torch.device("cpu"),
                        num_input_channels=1, num_classes=3, extra={"training": True})
    return method, ctx


SOFT_TISSUE_Z = ((-160.0 - 50.0) / 100.0, (240.0 - 50.0) / 100.0)


@pytest.mark.parametrize("name,options", [
    ("sautomed", {"input_size": "64", "slice_size": "32 32", "attention_heads": "2", "history_tokens": "4"}),
    ("masksam", {"patch_size": "4 32 32", "input_size": "64", "num_queries": "4", "generator_width": "8"}),
    ("medlsam", {}),
])
def test_preprocessed_ct_reaches_the_encoder_in_the_soft_tissue_window(name, options):
    """On preprocessed CT the 2D SAM methods clip to MedSAM's W400/L40 (in z-score units) before the
    min-max scaling; they used each slice's range (sautomed, masksam) or the volume's 0.5-99.5
    percentiles (medlsam), which cost 0.13 Dice with reference boxes on a real CT (0.75 vs 0.88)."""
    method, ctx = _ct_ctx(name, options)
    if name == "medlsam":
        vol = torch.randn(1, 6, 32, 32) * 3
        window = method.encode_image(None, vol, ctx)["frame"].window
    else:
        net = method.build_network(ctx)
        window = net.backbone.intensity_window if name == "sautomed" else net.encoder.intensity_window
    assert window == pytest.approx(SOFT_TISSUE_Z)
    # an explicit --window wins; MR (z-score) keeps each slice's own range
    method, ctx = _ct_ctx(name, {**options, "window": "-1 1"})
    from autosam.sam.intensity import method_window

    assert method_window(ctx, ctx.options.window) == (-1.0, 1.0)
    ctx.configuration.normalization_schemes = ["ZScoreNormalization"]
    assert method_window(ctx, None) is None


def test_prepare_slices_uses_the_backbone_window():
    bb = build_backbone("litemedsam", input_size=32)
    air_and_tissue = torch.full((1, 1, 32, 32), -10.5)  # air in z units
    air_and_tissue[..., 8:24, 8:24] = 0.4  # soft tissue (90 HU)
    air_and_tissue[..., 12:16, 12:16] = 0.9  # brighter tissue (140 HU)
    spread_without = bb.prepare_slices(air_and_tissue)[0, 0, 16, 16] - bb.prepare_slices(air_and_tissue)[0, 0, 10, 10]
    bb.intensity_window = SOFT_TISSUE_Z
    x = bb.prepare_slices(air_and_tissue)
    assert float(x.min()) == 0.0 and float(x.max()) == pytest.approx(1.0)
    assert float(x[0, 0, 13, 13] - x[0, 0, 10, 10]) > 3 * float(spread_without)  # tissue contrast kept
