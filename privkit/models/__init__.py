"""Model registry and built-in architectures."""

from privkit.models.registry import create, default_model, list_models, load_model, model_meta, register_model, save_model

__all__ = ["create", "default_model", "list_models", "load_model", "model_meta", "register_model", "save_model"]
