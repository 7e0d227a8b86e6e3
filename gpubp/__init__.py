"""gpubp: backpropagation from scratch on the CPU (NumPy) and NVIDIA GPUs (CuPy + own CUDA kernels)."""

from .augment import Augment
from .backends import get_backend
from .data import load_mnist
from .errors import GpubpError
from .network import Network
from .sweeps import sweep
from .training import train
from .version import __version__

__all__ = ["Augment", "GpubpError", "Network", "__version__", "get_backend", "load_mnist", "sweep", "train"]
