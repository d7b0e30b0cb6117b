"""Plain sampling: the synthetic set SIDE labels, and Carlini et al.'s UnCond baseline (no guidance, lambda 0)."""

from __future__ import annotations

from .base import ExtractionMethod

SYNTHETIC = ExtractionMethod("synthetic", "unguided samples used to build surrogate labels", extractable=False)
UNCOND = ExtractionMethod("uncond", "Carlini et al. UnCond: plain unconditional sampling")
