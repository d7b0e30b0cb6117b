"""Surrogate labels: embed the synthetic set, cluster it, keep the cohesive clusters."""
