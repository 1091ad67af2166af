"""HeadRouter: training-free audio-token pruning for large audio-language models."""
