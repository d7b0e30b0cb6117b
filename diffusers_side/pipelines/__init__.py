"""diffusers pipelines: SIDEPipeline and its LoRA variants, and loading them from a folder, name or repo id."""
