"""The methods' layers do what docs/methods.md says: ST-Adapter's conv across slices, prompts
in Swin windows, prompt tokens flowing (shallow) or replaced (deep) in ViTs."""

from __future__ import annotations

import torch
from timm.models.swin_transformer import WindowAttention

from medtune.modeling.methods.st_adapter import STAdapter
from medtune.modeling.methods.vpt import PromptedWindowAttention
from medtune.modeling.slicing import SliceContext, grid_to_volume, volume_to_grid
from tiny import seeded_build, tiny_model_config, volume


def test_st_adapter_slice_conv_equals_conv3d():
    """The shifted-sum evaluation of the depthwise (k,1,1) conv is the Conv3d's arithmetic."""
    torch.manual_seed(0)
    for kernel in (1, 3, 5):
        layer = STAdapter(12, 6, kernel=kernel)
        torch.nn.init.normal_(layer.up.weight)
        x = torch.randn(2 * 7, 3, 4, 12)  # B=2 volumes of D=7 slices
        v = grid_to_volume(layer.down(x), 2)
        expected = x + layer.up(volume_to_grid(layer.act(layer.conv(v))))
        out = layer(x, SliceContext(batch=2, depth=7))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_swin_prompts_join_every_window_keys_and_values():
    """Reference: softmax over [prompt keys, window keys] with the window's bias and mask."""
    torch.manual_seed(0)
    dim, heads, ws, num = 8, 2, 2, 3
    attn = WindowAttention(dim, heads, window_size=ws).eval()
    wrapped = PromptedWindowAttention(attn, num, patch_inputs=16, dropout=0.0).eval()
    nw, n = 4, ws * ws
    x = torch.randn(2 * nw, n, dim)
    mask = torch.zeros(nw, n, n)
    mask[1, 0, 1:] = -100.0  # a shifted-window style mask on one window
    out = wrapped(x, mask=mask)

    hd = dim // heads
    q, k, v = attn.qkv(x).reshape(2 * nw, n, 3, heads, hd).permute(2, 0, 3, 1, 4)
    pk, pv = attn.qkv(wrapped.prompts).reshape(num, 3, heads, hd).permute(1, 2, 0, 3)[1:]
    k = torch.cat([pk.expand(2 * nw, -1, -1, -1), k], 2)
    v = torch.cat([pv.expand(2 * nw, -1, -1, -1), v], 2)
    logits = (q * hd**-0.5) @ k.transpose(-2, -1)  # (B_, H, n, P+n)
    bias = attn._get_rel_pos_bias()[0]  # (H, n, n)
    logits[..., num:] += bias
    logits[..., num:] += mask.repeat(2, 1, 1)[:, None]
    ref = attn.proj((logits.softmax(-1) @ v).transpose(1, 2).reshape(2 * nw, n, dim))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(out, attn(x, mask=mask), atol=1e-3)  # the prompts matter


def _block_inputs(model, x):
    seen = {}
    hooks = [
        blk.register_forward_pre_hook(lambda m, a, i=i: seen.__setitem__(i, a[0].detach()))
        for i, blk in enumerate(model.backbone.model.blocks)
    ]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return seen


def test_vit_prompts_flow_through_shallow_and_are_replaced_deep():
    x = volume()
    tokens = (64 // 8) ** 2
    shallow = seeded_build(tiny_model_config("vit", "vpt_shallow", num_tokens=5))
    deep = seeded_build(tiny_model_config("vit", "vpt_deep", num_tokens=5))
    s_in, d_in = _block_inputs(shallow, x), _block_inputs(deep, x)
    for i in range(8):
        assert s_in[i].shape[1] == d_in[i].shape[1] == 5 + tokens
        prompts = deep.backbone.pre_block[str(i)].prompts
        assert torch.equal(d_in[i][:, :5], prompts.expand(8, -1, -1))
    first = shallow.backbone.pre_block["0"].prompts
    assert torch.equal(s_in[0][:, :5], first.expand(8, -1, -1))
    assert not torch.allclose(s_in[3][:, :5], first.expand(8, -1, -1))  # transformed by blocks
    assert list(shallow.backbone.pre_block) == ["0"]
