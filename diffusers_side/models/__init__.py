"""The networks the audit adds to a target: the surrogate classifier and LoRA label conditioning."""
