"""Audits beyond extraction: the memorization divergence, query-only SIDE, canary audits."""
