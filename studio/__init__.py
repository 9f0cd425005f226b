"""Tuning Studio: point-and-click LLM fine-tuning (QLoRA / LoRA) on one GPU or a CPU."""

__version__ = "0.1.0"
