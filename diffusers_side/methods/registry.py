"""The extraction methods by name: one file per method under ``methods/`` and one `register_method` line here.

The CLI (choices and help), the settings, the engine, the cards and the demo read a method through
[`get_method`] and ask it what to do (see [`~diffusers_side.methods.base.ExtractionMethod`]).

Example:

```py
>>> from diffusers_side.methods.registry import get_method
>>> get_method("side").default_guidance_scale
1.0
>>> get_method("sidee")
Traceback (most recent call last):
ValueError: method='sidee' is not one of ('synthetic', 'side', 'uncond', 'cond', 'side-lora', 'side-exemplar'); ...
```
"""

from __future__ import annotations

from .base import ExtractionMethod, SampleFn, ShardRequest, sample_with_pipeline
from .classifier import COND, SIDE
from .exemplar import SIDE_EXEMPLAR
from .lora import SIDE_LORA
from .plain import SYNTHETIC, UNCOND

__all__ = [
    "METHODS", "ExtractionMethod", "SampleFn", "ShardRequest", "extraction_method_names", "get_method",
    "guided_method_names", "methods_help", "register_method", "sample_with_pipeline",
]

METHODS: dict[str, ExtractionMethod] = {}


def register_method(method: ExtractionMethod) -> ExtractionMethod:
    """Add ``method`` to [`METHODS`]; a name can be registered once."""
    if method.name in METHODS:
        raise ValueError(f"An extraction method named {method.name!r} is already registered.")
    METHODS[method.name] = method
    return method


def get_method(name: str) -> ExtractionMethod:
    """The method called ``name``.

    Raises:
        `ValueError`: an unknown name (the message lists the registered ones).
    """
    if name not in METHODS:
        raise ValueError(f"method={name!r} is not one of {tuple(METHODS)}; choose one of them.")
    return METHODS[name]


def extraction_method_names() -> tuple[str, ...]:
    """The methods ``side extract`` offers and the demo compares, in registration order."""
    return tuple(name for name, method in METHODS.items() if method.extractable)


def guided_method_names() -> tuple[str, ...]:
    """The methods that take a guidance scale (what ``side sweep`` can sweep)."""
    return tuple(name for name in extraction_method_names() if METHODS[name].guided)


def methods_help(names: tuple[str, ...] | None = None) -> str:
    """One line per method (``name: description (default lambda)``), for ``--help``."""
    names = extraction_method_names() if names is None else names
    return "\n".join(f"  {name}: {METHODS[name].help_text()}" for name in names)


register_method(SYNTHETIC)
register_method(SIDE)
register_method(UNCOND)
register_method(COND)
register_method(SIDE_LORA)
register_method(SIDE_EXEMPLAR)
