"""The one exception type users see: its message is a single line saying what is wrong and what to do."""


class GpubpError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""


class BackendUnavailable(GpubpError):
    """The requested backend cannot run here (no CuPy, no driver, no device, no C++ compiler)."""


class DataError(GpubpError):
    """An IDX or MNIST file is missing, corrupt or fails its checksum."""


class ModelFileError(GpubpError):
    """A model file is not a gpubp model, or is truncated or inconsistent."""


class TrainingDiverged(GpubpError):
    """The cost became NaN or infinite during training."""


class EmulatorError(GpubpError):
    """A kernel broke a CUDA rule on the emulated backend (shared index out of bounds, a barrier
    or warp call that not every thread reaches); the message names the kernel and the block."""
