"""kddiag: find out why knowledge distillation did not work.

Measures the three levels of knowledge a teacher passes to a student (Tang et al. 2020,
arXiv 2002.03532) — knowledge of the universe, domain knowledge, instance-specific knowledge —
and turns the measurements into a ranked diagnosis.
"""
__version__ = "0.1.0"
SCHEMA_VERSION = "1.9"

__all__ = ["__version__", "SCHEMA_VERSION", "inspect", "compare", "Monitor"]


def inspect(*args, **kwargs):
    """Run a full inspection; see :func:`kddiag.pipeline.inspect`."""
    from kddiag.pipeline import inspect as _inspect

    return _inspect(*args, **kwargs)


def compare(*args, **kwargs):
    """Compare several students of one teacher; see :func:`kddiag.pipeline.compare`."""
    from kddiag.pipeline import compare as _compare

    return _compare(*args, **kwargs)


def __getattr__(name: str):
    """``kddiag.Monitor`` imported on first use, so ``import kddiag`` stays light."""
    if name == "Monitor":
        from kddiag.monitor import Monitor

        return Monitor
    raise AttributeError(f"module 'kddiag' has no attribute {name!r}")
