"""Recipes (which repair methods a binary network uses) and the catalogue of methods."""

from bnnkit.recipe.catalogue import (
    METHODS,
    RECIPES,
    TOPOLOGY,
    TRAINING,
    Method,
    apply_methods,
    get_method,
    load_recipe,
    method_names,
    methods_needing,
    recipe_names,
)
from bnnkit.recipe.core import BASELINE, Recipe

__all__ = [
    "BASELINE",
    "METHODS",
    "RECIPES",
    "TOPOLOGY",
    "TRAINING",
    "Method",
    "Recipe",
    "apply_methods",
    "get_method",
    "load_recipe",
    "method_names",
    "methods_needing",
    "recipe_names",
]
