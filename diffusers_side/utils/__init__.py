"""Small helpers every layer may use: atomic writes and argument types."""
