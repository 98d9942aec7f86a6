"""Med-Tuning: a Med-Adapter after every block of the frozen backbone."""

from __future__ import annotations

from torch import nn

from medtune.core.errors import MedtuneInputError
from medtune.modeling.backbones.base import select_stages
from medtune.modeling.methods.base import TuningMethod, register_method
from medtune.modeling.methods.med_adapter.config import MedAdapterConfig
from medtune.modeling.methods.med_adapter.layer import InterStage, MedAdapter


@register_method("med_adapter")
class MedTuning(TuningMethod):
    """Insert one Med-Adapter after each block (CNNs: after each feature stage).

    The last adapter of each stage does the inter-stage interaction. For stage 0 the previous
    state is a zero input: Swin: half the channels at twice the resolution; ViT and CNN: the
    same channels and resolution (the release's shapes, whose parameters count).
    """

    config_cls = MedAdapterConfig

    def hidden(self, channels: int) -> int:
        """Bottleneck width C' for a block of `channels` channels."""
        return max(self.config.min_hidden, channels // self.config.alpha)

    def insert(self, model: nn.Module) -> None:
        cfg: MedAdapterConfig = self.config
        if cfg.train_depth is None:
            raise MedtuneInputError(
                "med_adapter.train_depth is not set (it defaults to data.crop_size[0])"
            )
        backbone = model.backbone
        stages = select_stages(backbone.insertion_points, cfg.stages, "med_adapter.stages")
        stage0_ratio = backbone.stage_hidden_info().get("stage0_ratio", 1)
        prev: tuple[int, int] | None = None  # (hidden, stride) of the last adapted stage end
        for points in stages.values():
            for p in points:
                hid = self.hidden(p.channels)
                inter = None
                if p.stage_end and cfg.inter_stage:
                    if prev is None:
                        ratio = stage0_ratio
                        prev_hidden = hid // ratio
                    else:
                        ratio = p.stride // prev[1]
                        prev_hidden = prev[0]
                    inter = InterStage(hid, prev_hidden, ratio, cfg.inter_stage_fusion)
                    prev = (hid, p.stride)
                backbone.post_block[str(p.index)] = MedAdapter(
                    p.channels,
                    hid,
                    cfg.train_depth,
                    multiscale=cfg.multiscale,
                    kernels=cfg.kernels,
                    fourier=cfg.fourier,
                    fusion_conv=cfg.fusion_conv,
                    depth_filter=cfg.depth_filter,
                    inter_stage=inter,
                )
