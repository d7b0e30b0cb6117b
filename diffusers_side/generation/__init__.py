"""The resumable, sharded generation engine behind `side synthesize` and `side extract`."""
