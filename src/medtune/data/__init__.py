"""Data layer: read datasets in place, convert downloads, synthesise phantoms, cache, load, check.

Modules: `dataset` (nnU-Net raw / MSD readers), `convert` (BraTS, KiTS, MSD converters),
`phantoms` (BraTS-like MRI, KiTS-like CT), `preprocess` (the `.npy` cache and the mapping back to
the original geometry), `loaders` (training crops, validation volumes), `splits`
(splits_final.json), `check` (check-data). See docs/data.md.
"""
