"""Extraction methods: one record per method (SIDE, Carlini UnCond / Cond, LoRA, exemplar)."""
