"""SAM backbones: registry, forward passes at two input sizes, SDPA equivalence, checkpoints."""
import pytest
import torch

from autosam.plugins import UnknownNameError, get_plugin_system
from autosam.sam.backbone import SamBackbone
from autosam.sam.backbones import build_backbone
from autosam.sam.checkpoints import CheckpointError
from autosam.sam.fast_attention import use_fast_attention

BUILTIN = {"sam_vit_b", "sam_vit_l", "sam_vit_h", "litemedsam", "tiny", "sam_med3d", "tiny3d"}


def test_builtin_backbones_registered_through_plugin():
    reg = get_plugin_system().backbones
    assert BUILTIN <= set(reg.names())
    assert reg.entry("litemedsam").plugin == "sam_backbones"
    with pytest.raises(UnknownNameError, match="litemedsam"):
        build_backbone("no_such_backbone")


@pytest.mark.parametrize("name,sizes", [("tiny", (64, 96)), ("litemedsam", (256, 96))])
def test_2d_forward_at_two_sizes(name, sizes):
    for size in sizes:
        b = build_backbone(name, input_size=size)
        assert isinstance(b, SamBackbone) and b.input_size == size
        x = b.prepare_slices(torch.randn(2, 1, 50, 70) * 100)
        assert x.shape == (2, 3, size, size)
        with torch.no_grad():
            emb = b.encode(x, batch_size=1)
            assert emb.shape == (2, b.embed_dim, *b.image_embedding_size)
            assert b.prompt_encoder.get_dense_pe().shape[-2:] == emb.shape[-2:]
            boxes = torch.tensor([[2.0, 3.0, size / 2, size - 4], [0.0, 0.0, size - 1, size - 1]])
            logits, iou = b.decode(emb, boxes=boxes)
        assert logits.shape == (2, 1, *b.low_res_mask_size) and iou.shape == (2, 1)
        assert torch.isfinite(logits).all()
        assert b.upscale_logits(logits).shape[-2:] == (size, size)


def test_decode_pairs_prompt_i_with_image_i():
    b = build_backbone("tiny")
    with torch.no_grad():
        emb = b.encode(b.prepare_slices(torch.randn(3, 1, 64, 64)))
        boxes = torch.tensor([[0.0, 0.0, 30, 30], [10, 10, 60, 60], [5, 20, 40, 50]])
        batched, _ = b.decode(emb, boxes=boxes)
        single, _ = b.decode_image(emb[1:2], boxes=boxes[1:2])
    assert batched.shape[0] == 3
    assert torch.allclose(batched[1:2], single, atol=1e-6)


@pytest.mark.parametrize("name,size", [("tiny", 96), ("litemedsam", 64)])
def test_sdpa_attention_matches_eager_fp32(name, size):
    torch.manual_seed(0)
    b = build_backbone(name, input_size=size)
    for n, p in b.image_encoder.named_parameters():
        if "rel_pos" in n or "attention_biases" in n:
            torch.nn.init.normal_(p, std=0.5)
    x = b.prepare_slices(torch.randn(2, 1, size, size))
    with torch.no_grad():
        fast = b.image_encoder(x)
        assert use_fast_attention(b.image_encoder, enabled=False) > 0
        eager = b.image_encoder.train().eval()(x)  # eval() refreshes TinyViT's cached bias
    assert torch.allclose(fast, eager, atol=1e-4, rtol=1e-4)


def test_prepare_slices_intensity():
    b = build_backbone("litemedsam", input_size=64)
    x = torch.linspace(-1000, 1000, 64 * 64).view(1, 1, 64, 64)
    y = b.prepare_slices(x, window=(-160, 240))
    assert y.shape == (1, 3, 64, 64) and y.min() == 0 and y.max() == 1  # unit range
    assert (y[0, 0] == 0).float().mean() > 0.3  # everything below -160 HU is black
    sam = build_backbone("tiny").prepare_slices(torch.zeros(1, 1, 64, 64) + 5)
    assert torch.allclose(sam[0, :, 0, 0], torch.tensor([-123.675 / 58.395, -116.28 / 57.12, -103.53 / 57.375]))
    with pytest.raises(ValueError, match="channel"):
        b.prepare_slices(torch.randn(1, 2, 64, 64))
    assert b.prepare_slices(torch.randn(1, 2, 64, 64), channel=1).shape == (1, 3, 64, 64)


def test_input_size_must_be_multiple_of_patch():
    with pytest.raises(ValueError, match="multiple of 16"):
        build_backbone("tiny", input_size=100)
