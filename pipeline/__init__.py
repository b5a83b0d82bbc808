"""Orchestration for the human-prior multi-task pre-training pipeline: CLI, config, stages."""

__version__ = "0.1.0"
