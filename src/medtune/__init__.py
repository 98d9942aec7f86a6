"""medtune: parameter-efficient tuning of 2D natural-image backbones for 3D medical segmentation."""

__version__ = "0.1.0"

__all__ = ["__version__"]
