"""attnlens capture: run a diffusers video pipeline with attention capture into a per-run Zarr store.

Public API: ``trace`` (the capture context), ``load_pipeline`` (model presets), ``open_run`` and
``Catalog`` (reading stores). Must not import dashboard or ieadapt.
"""

__version__ = "0.1.0"


def __getattr__(name):
    # parts load on first use: `import capture.store` stays torch-free for the dashboard, and the
    # command line's listing commands import neither numpy nor pandas
    if name == "open_run":
        from .store import open_run

        return open_run
    if name in ("trace", "Tracer", "CaptureConfig"):
        from . import tracer as _t  # the module is `tracer`, the function `trace`: no name clash

        return getattr(_t, name)
    if name == "load_pipeline":
        from .models.presets import load_pipeline

        return load_pipeline
    if name == "Catalog":
        from .catalog import Catalog

        return Catalog
    raise AttributeError(name)


__all__ = ["trace", "Tracer", "CaptureConfig", "load_pipeline", "open_run", "Catalog", "__version__"]
