"""Model presets and architecture families (the only code that names diffusers model internals)."""
