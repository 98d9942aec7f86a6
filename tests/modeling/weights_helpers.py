"""Writers of checkpoint files in the layouts users download (imported by the weight tests)."""

from __future__ import annotations

import re

import numpy as np
import torch


def write_google_npz(model: torch.nn.Module, path) -> None:
    """Write a timm ViT (with class token) in Google's big_vision/ViT `.npz` layout."""
    sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    c = model.embed_dim
    heads = model.blocks[0].attn.num_heads
    hd = c // heads
    out = {
        "embedding/kernel": sd["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
        "embedding/bias": sd["patch_embed.proj.bias"],
        "cls": sd["cls_token"],
        "Transformer/posembed_input/pos_embedding": sd["pos_embed"],
        "Transformer/encoder_norm/scale": sd["norm.weight"],
        "Transformer/encoder_norm/bias": sd["norm.bias"],
    }
    for i in range(len(model.blocks)):
        p, b = f"Transformer/encoderblock_{i}/", f"blocks.{i}."
        for ln, norm in (("LayerNorm_0", "norm1"), ("LayerNorm_2", "norm2")):
            out[p + f"{ln}/scale"] = sd[b + f"{norm}.weight"]
            out[p + f"{ln}/bias"] = sd[b + f"{norm}.bias"]
        qkv_w = sd[b + "attn.qkv.weight"].reshape(3, c, c)
        qkv_b = sd[b + "attn.qkv.bias"].reshape(3, c)
        attn = p + "MultiHeadDotProductAttention_1/"
        for j, name in enumerate(["query", "key", "value"]):
            out[attn + f"{name}/kernel"] = qkv_w[j].T.reshape(c, heads, hd)
            out[attn + f"{name}/bias"] = qkv_b[j].reshape(heads, hd)
        out[attn + "out/kernel"] = sd[b + "attn.proj.weight"].T.reshape(heads, hd, c)
        out[attn + "out/bias"] = sd[b + "attn.proj.bias"]
        out[p + "MlpBlock_3/Dense_0/kernel"] = sd[b + "mlp.fc1.weight"].T
        out[p + "MlpBlock_3/Dense_0/bias"] = sd[b + "mlp.fc1.bias"]
        out[p + "MlpBlock_3/Dense_1/kernel"] = sd[b + "mlp.fc2.weight"].T
        out[p + "MlpBlock_3/Dense_1/bias"] = sd[b + "mlp.fc2.bias"]
    np.savez(path, **out)


def microsoft_swin_layout(model: torch.nn.Module, num_classes: int = 1000) -> dict:
    """A timm Swin's weights as Microsoft's release stores them: `{"model": ...}`, patch merging
    at the end of the previous stage, the attention buffers (`relative_position_index`,
    `attn_mask`) saved, and a classifier `head`."""
    ms = {}
    for k, v in model.state_dict().items():
        ms[
            re.sub(r"layers\.(\d+)\.downsample", lambda m: f"layers.{int(m[1]) - 1}.downsample", k)
        ] = v
    for name, mod in model.named_modules():
        if hasattr(mod, "relative_position_index"):
            ms[f"{name}.relative_position_index"] = mod.relative_position_index.clone()
        if getattr(mod, "attn_mask", None) is not None:
            ms[f"{name}.attn_mask"] = mod.attn_mask.clone()
    ms["head.weight"] = torch.randn(num_classes, model.num_features)
    ms["head.bias"] = torch.randn(num_classes)
    return {"model": ms}
