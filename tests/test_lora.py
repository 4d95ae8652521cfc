"""LoRA on fused qkv: only LoRA trains, identity at init, learns after a step."""
import pytest
import torch

from autosam.sam.backbones import build_backbone
from autosam.sam.lora import LoRAQKVLinear, apply_lora, count_parameters, lora_parameters, parameter_report


def _one_step(backbone, x):
    opt = torch.optim.Adam([p for p in backbone.parameters() if p.requires_grad], lr=1e-2)
    backbone.image_encoder(x).pow(2).mean().backward()
    opt.step()


@pytest.mark.parametrize("name", ["tiny", "litemedsam", "tiny3d"])
def test_lora_identity_at_init_and_trains(name):
    torch.manual_seed(0)
    size = {"litemedsam": 64}.get(name)  # small input keeps the test fast; weights are size-free
    b = build_backbone(name, input_size=size, allow_random_init=True)
    if b.dims == 2:
        x = b.prepare_slices(torch.randn(2, 1, b.input_size, b.input_size))
    else:
        x = b.prepare_volume(torch.randn(1, 1, *(b.input_size,) * 3))
    with torch.no_grad():
        before = b.image_encoder(x)
    adapted = apply_lora(b.image_encoder, rank=4)
    assert adapted and all(isinstance(b.image_encoder.get_submodule(n), LoRAQKVLinear) for n in adapted)
    # only LoRA parameters of the encoder require gradients
    lora_ids = {id(p) for p in lora_parameters(b.image_encoder)}
    trainable = [p for p in b.image_encoder.parameters() if p.requires_grad]
    assert trainable and {id(p) for p in trainable} == lora_ids
    with torch.no_grad():
        assert torch.equal(b.image_encoder(x), before)
    _one_step(b, x)
    with torch.no_grad():
        after = b.image_encoder(x)
    assert (after - before).abs().max() > 1e-4
    t, n = count_parameters(b.image_encoder)
    assert t == sum(p.numel() for p in lora_parameters(b.image_encoder)) and 0 < t < n


def test_lora_qv_only_touches_q_and_v_rows():
    b = build_backbone("tiny")
    apply_lora(b.image_encoder, rank=2, targets=("q", "v"))
    layer = b.image_encoder.blocks[0].attn.qkv
    for p in lora_parameters(layer):
        torch.nn.init.normal_(p)
    c = layer.in_features
    delta = layer.merged_weight() - layer.weight
    assert delta[:c].abs().sum() > 0 and delta[2 * c:].abs().sum() > 0
    assert torch.equal(delta[c:2 * c], torch.zeros_like(delta[c:2 * c]))  # k untouched
    x = torch.randn(3, c)
    assert torch.allclose(layer(x), x @ layer.merged_weight().t() + layer.bias, atol=1e-5)


def test_lora_tinyvit_interleaved_layout():
    """TinyViT's qkv is per head [q k v]; the update must land on q and v rows only."""
    b = build_backbone("litemedsam", input_size=64)
    apply_lora(b.image_encoder, rank=2)
    attn = b.image_encoder.layers[1].blocks[0].attn
    for p in lora_parameters(attn):
        torch.nn.init.normal_(p)
    delta = (attn.qkv.merged_weight() - attn.qkv.weight).abs().sum(1)
    per = 2 * attn.key_dim + attn.d
    for h in range(attn.num_heads):
        q, k, v = (delta[h * per: h * per + attn.key_dim], delta[h * per + attn.key_dim: h * per + 2 * attn.key_dim],
                   delta[h * per + 2 * attn.key_dim: (h + 1) * per])
        assert (q > 0).all() and (v > 0).all() and (k == 0).all()


def test_pretrained_state_dict_still_loads_after_lora():
    b = build_backbone("tiny")
    state = {k: v.clone() for k, v in b.state_dict().items()}
    apply_lora(b.image_encoder)
    res = b.load_state_dict(state, strict=False)
    assert not res.unexpected_keys and all("lora_" in k for k in res.missing_keys)


def test_report_and_errors():
    b = build_backbone("tiny")
    apply_lora(b.image_encoder)
    rep = parameter_report(b)
    assert "image_encoder" in rep and rep.splitlines()[-1].startswith("total")
    with pytest.raises(ValueError, match="rank"):
        apply_lora(build_backbone("tiny").image_encoder, rank=0)
    with pytest.raises(ValueError, match="no fused qkv"):
        apply_lora(torch.nn.Sequential(torch.nn.Linear(3, 3)))
