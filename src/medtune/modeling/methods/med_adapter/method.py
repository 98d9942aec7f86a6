"""Med-Tuning: a Med-Adapter after every block of the frozen backbone."""

from __future__ import annotations

from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import InsertionPoint, select_stages
from medtune.modeling.methods.base import TuningMethod, register_method
from medtune.modeling.methods.med_adapter.config import MedAdapterConfig
from medtune.modeling.methods.med_adapter.layer import InterStage, MedAdapter


def inter_stage(
    channels: int, prev_channels: int, ratio: int, depth_ratio: int, fusion: str
) -> InterStage:
    """The stage-end fusion; its alignment conv strides `(depth_ratio, ratio, ratio)`.

    2D families (`depth_ratio == 1`): `InterStage` as it is (1x1x1, or kernel (1,3,3) stride
    (1,r,r)). Native 3D families, whose depth halves with h and w: kernel (3,3,3), padding 1,
    stride `(depth_ratio, ratio, ratio)`, i.e. (2,2,2) between Swin UNETR stages.
    """
    module = InterStage(channels, prev_channels, ratio, fusion)
    if depth_ratio != 1:
        # Until InterStage takes `depth_ratio` itself (layer.py is being rewritten elsewhere):
        # the same parameter name, a 3D-strided conv.
        module.align = nn.Conv3d(
            prev_channels, channels, 3, stride=(depth_ratio, ratio, ratio), padding=1
        )
    return module


@register_method("med_adapter")
class MedTuning(TuningMethod):
    """Insert one Med-Adapter after each block (CNNs: after each feature stage).

    The last adapter of each stage does the inter-stage interaction. For stage 0 the previous
    state is a zero input: Swin: half the channels at twice the resolution (Swin UNETR: twice
    the depth too); ViT and CNN: the same channels and resolution (the release's shapes, whose
    parameters count). Each adapter's Fourier filter spans its block's own depth,
    `train_depth / depth_stride` (2D families: every slice, `train_depth`).
    """

    config_cls = MedAdapterConfig

    def hidden(self, channels: int) -> int:
        """Bottleneck width C' for a block of `channels` channels."""
        return max(self.config.min_hidden, channels // self.config.alpha)

    def filter_depth(self, point: InsertionPoint) -> int:
        """Length of the Fourier filter of the adapter after `point`: the depth of its grid
        when the input is a training crop."""
        depth = self.config.train_depth
        if depth % point.depth_stride:
            raise MedtuneInputError(
                f"med_adapter.train_depth {depth} is not divisible by {point.depth_stride}, the "
                f"depth stride of stage {point.stage} of this native 3D backbone; use a crop "
                f"depth that is a multiple of {point.depth_stride}"
            )
        return depth // point.depth_stride

    def insert(self, model: nn.Module) -> None:
        cfg: MedAdapterConfig = self.config
        if cfg.train_depth is None:
            raise MedtuneInputError(
                "med_adapter.train_depth is not set (it defaults to data.crop_size[0])"
            )
        backbone = model.backbone
        stages = select_stages(backbone.insertion_points, cfg.stages, "med_adapter.stages")
        info = backbone.stage_hidden_info()
        prev: tuple[int, InsertionPoint] | None = None  # (hidden, point) of the last stage end
        for points in stages.values():
            for p in points:
                hid = self.hidden(p.channels)
                inter = None
                if p.stage_end and cfg.inter_stage:
                    if prev is None:
                        ratio = info.get("stage0_ratio", 1)
                        depth_ratio = info.get("stage0_depth_ratio", 1)
                        prev_hidden = hid // ratio
                    else:
                        ratio = p.stride // prev[1].stride
                        depth_ratio = p.depth_stride // prev[1].depth_stride
                        prev_hidden = prev[0]
                    inter = inter_stage(
                        hid, prev_hidden, ratio, depth_ratio, cfg.inter_stage_fusion
                    )
                    prev = (hid, p)
                backbone.post_block[str(p.index)] = MedAdapter(
                    p.channels,
                    hid,
                    self.filter_depth(p),
                    multiscale=cfg.multiscale,
                    kernels=cfg.kernels,
                    fourier=cfg.fourier,
                    fusion_conv=cfg.fusion_conv,
                    depth_filter=cfg.depth_filter,
                    inter_stage=inter,
                )
