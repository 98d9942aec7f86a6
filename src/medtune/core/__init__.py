"""Shared foundations: errors, registries, config dataclass helpers, atomic writes."""
