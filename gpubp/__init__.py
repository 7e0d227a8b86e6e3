"""gpubp: backpropagation from scratch on the CPU (NumPy) and NVIDIA GPUs (CuPy + own CUDA kernels)."""

from .backends import get_backend
from .data import load_mnist
from .errors import GpubpError
from .network import Network
from .sweeps import sweep
from .training import train
from .version import __version__

__all__ = ["GpubpError", "Network", "__version__", "get_backend", "load_mnist", "sweep", "train"]
