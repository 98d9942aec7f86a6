"""Artifacts a run leaves: adapter-only folders, multi-task banks, the run-folder layout."""
