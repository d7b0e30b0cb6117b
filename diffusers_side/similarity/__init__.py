"""Image similarity measures and nearest-match search (normalized L2, cosine)."""
