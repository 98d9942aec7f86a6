"""Med-Tuning: a Med-Adapter after every block of the frozen backbone."""

from __future__ import annotations

from torch import nn

from medtune.backbones.base import stage_of_points
from medtune.errors import MedtuneInputError
from medtune.methods.base import TuningMethod, register_method
from medtune.methods.med_adapter.config import MedAdapterConfig
from medtune.methods.med_adapter.layer import InterStage, MedAdapter


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
        stages = stage_of_points(backbone.insertion_points)
        wanted = set(stages) if cfg.stages is None else set(cfg.stages)
        unknown = wanted - set(stages)
        if unknown:
            raise MedtuneInputError(
                f"med_adapter.stages: stages {sorted(unknown)} do not exist; this backbone has stages 0..{len(stages) - 1}"
            )
        stage0_ratio = backbone.stage_hidden_info().get("stage0_ratio", 1)
        prev: tuple[int, int] | None = (
            None  # (hidden, stride) of the last stage end with an adapter
        )
        for s, points in stages.items():
            if s not in wanted:
                continue
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
