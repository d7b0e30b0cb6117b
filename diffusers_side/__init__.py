"""diffusers-side: audit unconditional diffusion models for training-data memorization (SIDE).

Importing the package registers its components with diffusers, so `SIDEPipeline.from_pretrained` can
rebuild a saved classifier.
"""

from .classifier import TimeDependentClassifier
from .pipeline_side import SIDEPipeline, SIDEPipelineOutput

__version__ = "0.1.0"
__all__ = ["SIDEPipeline", "SIDEPipelineOutput", "TimeDependentClassifier", "__version__"]
