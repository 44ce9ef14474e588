"""TFX-style pipeline components: each reads and writes artifacts in a run dir."""
