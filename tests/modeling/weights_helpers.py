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


def moco_v3_layout(model: torch.nn.Module) -> dict:
    """A timm ViT (class token) as MoCo v3's released `.pth.tar` stores it: `state_dict` with the
    ViT under `module.base_encoder.` (with its projection MLP `head`), the momentum encoder under
    `module.momentum_encoder.` and the predictor under `module.predictor.`."""
    sd = {}
    dim = model.embed_dim
    for k, v in model.state_dict().items():
        sd[f"module.base_encoder.{k}"] = v
        sd[f"module.momentum_encoder.{k}"] = v.clone()
    for enc in ("base_encoder", "momentum_encoder"):
        sd[f"module.{enc}.head.0.weight"] = torch.randn(32, dim)
        sd[f"module.{enc}.head.1.weight"] = torch.ones(32)
    sd["module.predictor.0.weight"] = torch.randn(32, 32)
    return {"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {"state": {}}}


def open_clip_layout(model: torch.nn.Module) -> dict:
    """A timm CLIP ViT (pre-norm, class token, no patch bias) in open_clip's / OpenAI's state-dict
    naming (`visual.*`), with a small text tower beside it."""
    names = [
        ("patch_embed.proj", "conv1"),
        ("norm_pre", "ln_pre"),
        ("blocks.", "transformer.resblocks."),
        ("norm1", "ln_1"),
        ("norm2", "ln_2"),
        ("attn.qkv.", "attn.in_proj_"),
        ("attn.proj", "attn.out_proj"),
        ("mlp.fc1", "mlp.c_fc"),
        ("mlp.fc2", "mlp.c_proj"),
    ]
    out = {}
    for k, v in model.state_dict().items():
        if k == "cls_token":
            out["visual.class_embedding"] = v[0, 0]
            continue
        if k == "pos_embed":
            out["visual.positional_embedding"] = v[0]
            continue
        if k.startswith("norm."):
            out["visual.ln_post." + k[5:]] = v
            continue
        for a, b in names:
            k = k.replace(a, b)
        out["visual." + k] = v
    out["visual.proj"] = torch.randn(model.embed_dim, 16)
    out["token_embedding.weight"] = torch.randn(100, 16)
    out["positional_embedding"] = torch.randn(8, 16)
    out["ln_final.weight"] = torch.ones(16)
    out["text_projection"] = torch.randn(16, 16)
    out["logit_scale"] = torch.tensor(4.6)
    return out


def sam_release_layout(model: torch.nn.Module) -> dict:
    """A timm SAM ViT as Meta's `sam_vit_b_01ec64.pth` stores it: the encoder under
    `image_encoder.` (MLP layers `lin1`/`lin2`, the neck included) beside the prompt encoder and
    mask decoder."""
    out = {}
    for k, v in model.state_dict().items():
        out["image_encoder." + k.replace("mlp.fc", "mlp.lin")] = v
    out["prompt_encoder.pe_layer.positional_encoding_gaussian_matrix"] = torch.randn(2, 16)
    out["mask_decoder.iou_token.weight"] = torch.randn(1, 32)
    return out


def dinov2_release_layout(model: torch.nn.Module) -> dict:
    """A timm DINOv2 ViT with registers (`no_embed_class`) as Meta's `dinov2_*_reg4_pretrain.pth`
    stores it: `register_tokens`, a `mask_token`, and the class token's position in `pos_embed`
    (zero here, so that timm's conversion gives the class token back)."""
    sd = dict(model.state_dict())
    out = {k: v for k, v in sd.items() if k not in ("reg_token", "pos_embed")}
    out["register_tokens"] = sd["reg_token"]
    pos = sd["pos_embed"]
    out["pos_embed"] = torch.cat([torch.zeros_like(pos[:, :1]), pos], dim=1)
    out["mask_token"] = torch.zeros(1, model.embed_dim)
    return out
