"""bnnkit: train binarized neural networks and deploy them on embedded devices."""

from bnnkit.errors import BnnkitError

__version__ = "0.1.0"
__all__ = ["BnnkitError", "__version__"]
