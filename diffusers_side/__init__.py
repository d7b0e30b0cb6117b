"""diffusers-side: audit unconditional diffusion models for training-data memorization (SIDE).

The public classes are imported on first access (PEP 562), so ``side --help`` and argument errors
do not pay for importing torch and diffusers. Accessing them (as `DiffusionPipeline.from_pretrained`
does through ``model_index.json``) registers the components with diffusers.
"""

import importlib

__version__ = "0.1.0"
_LAZY = {
    "SIDELoRAPipeline": "pipelines.pipeline_side_lora",
    "SIDELoRAPipelineOutput": "pipelines.pipeline_side_lora",
    "SIDEPipeline": "pipelines.pipeline_side",
    "SIDEPipelineOutput": "pipelines.pipeline_side",
    "TimeDependentClassifier": "models.classifier",
}
__all__ = ["SIDELoRAPipeline", "SIDELoRAPipelineOutput", "SIDEPipeline", "SIDEPipelineOutput", "TimeDependentClassifier", "__version__"]


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
