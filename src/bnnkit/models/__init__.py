"""Architectures built from a recipe, looked up by name with `create_model`."""

from bnnkit.models import cnn, mlp, resnet  # noqa: F401  (registers the architectures)
from bnnkit.models.registry import MODELS, create_model, model_features, model_names, model_options, register_model

__all__ = ["MODELS", "create_model", "model_features", "model_names", "model_options", "register_model"]
