from .ot import LocalCost  # noqa: F401

__version__ = "0.1.0"
