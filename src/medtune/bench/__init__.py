"""Speed and memory of a config's model: `medtune bench` and `benchmarks/gpu_suite.py`.

- `measure`: `BenchOptions` and `bench_config(cfg, options)` -> one result row (parameters,
  training step, the floor, a compared method, peak memory, window and whole-volume inference).
- `report`: `RESULT_KEYS` and `markdown_table(rows)`.

Imports torch, timm, MONAI and the project's model code, never Lightning. See
docs/performance.md.
"""

from medtune.bench.measure import BenchOptions, bench_config
from medtune.bench.report import RESULT_KEYS, caption, markdown_table

__all__ = ["RESULT_KEYS", "BenchOptions", "bench_config", "caption", "markdown_table"]
