"""Tests build tiny models with the same builder the demo's --tiny uses."""

from modelfactory.training.tiny import CHAT_TEMPLATE, build_tiny_model_dir, build_tiny_tokenizer

__all__ = ["CHAT_TEMPLATE", "build_tiny_model_dir", "build_tiny_tokenizer"]
