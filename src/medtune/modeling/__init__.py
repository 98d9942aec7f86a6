"""The model: slices, backbones, tuning methods, decoders, the 3D segmentation model, parameter counts."""
