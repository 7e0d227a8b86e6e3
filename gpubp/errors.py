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


class TrainingWarning(UserWarning):
    """Training that runs but goes nowhere (accuracy at chance, a cost that does not move). Issued with
    ``warnings.warn``, so Python users see it once by default and can filter it or make it an error;
    the command line prints it as one line on stderr. The run's history also keeps the messages."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training. The network is left as it was after the last completed epoch
    (weights, optimizer state, shuffle, epoch count), so it can be saved and resumed.

    history: the records of the completed epochs of this call; completed: the last completed epoch
    (counted over the network's life); epoch: the epoch that was running, or None when the
    interrupt came between epochs (from an on_epoch callback)."""

    def __init__(self, history, completed, epoch):
        super().__init__(f"interrupted in epoch {epoch}" if epoch else f"interrupted after epoch {completed}")
        self.history, self.completed, self.epoch = history, completed, epoch
