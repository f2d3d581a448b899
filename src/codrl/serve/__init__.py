"""``codrl serve``: an OpenAI-compatible training proxy that records every model call token-exactly."""

from codrl.serve.proxy import TrainingProxy

__all__ = ["TrainingProxy"]
