"""Where `TimeDependentClassifier` lived before the package was laid out by concept (now `diffusers_side.models.classifier`).

Pipeline folders saved before then record ``["diffusers_side.classifier", "TimeDependentClassifier"]`` in their
`model_index.json`, and diffusers looks the class and its loadable base up in that module: this alias keeps them
loading. Nothing in the package imports it.
"""

from diffusers.models.modeling_utils import ModelMixin

from .models.classifier import TimeDependentClassifier

__all__ = ["ModelMixin", "TimeDependentClassifier"]
