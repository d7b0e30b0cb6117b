"""Multi-stage runs built on the library: the demo, sweeps, pushes."""
