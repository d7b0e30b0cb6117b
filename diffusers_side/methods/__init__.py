"""Extraction methods, one file each (plain sampling, classifier guidance, exemplar guidance, LoRA), registered by
name in `registry`; `base.ExtractionMethod` is what the CLI, the engine, the demo and the settings ask."""
