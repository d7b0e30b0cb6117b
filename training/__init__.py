"""accelerate launch scripts; installed as `diffusers_side.training` so the CLI runs the same loops."""
