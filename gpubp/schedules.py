"""Learning-rate schedules: the eta of each epoch, from the run's base eta (``--schedule``).

Epochs are counted from 0 over the network's whole life (``Network.epochs_trained`` before the
epoch starts), so a resumed run continues the schedule where it stopped. Every schedule may start
with a linear warm-up of ``warmup`` epochs: epoch e < warmup trains at eta * (e + 1) / (warmup + 1).
After it, with t = e - warmup:

    constant  eta
    step      eta * gamma ** (t // step_size)                    (gamma 0.5, step_size 10)
    exp       eta * gamma ** t                                   (gamma 0.95)
    cosine    eta * (floor + (1 - floor) * (1 + cos(pi * t / T)) / 2),   T = epochs - warmup
              (epochs: the run's whole length, fixed when the schedule is made; floor 0)
    plateau   Nielsen's ch. 3 rule: eta / factor ** k, where k grows by one each time ``patience``
              epochs pass without a better validation accuracy; training stops once eta would fall
              to eta / 128 or below (factor 2, patience 10)

A schedule is a small object with its settings (``config``) and, for plateau, its state (``state``):
both go into the model file, so that 2 epochs, save, load and 2 resumed epochs train exactly as 4.
"""

from __future__ import annotations

import math

from .errors import GpubpError

SCHEDULES = ("constant", "step", "exp", "cosine", "plateau")
DEFAULTS = {"warmup": 0, "gamma": None, "step_size": 10, "epochs": None, "floor": 0.0, "patience": 10, "factor": 2.0}
PLATEAU_STOP = 128  # plateau stops once eta has been divided this much (Nielsen ch. 3: "1/128 of the original")


def _check(what, v, kind, ok, rule):
    try:
        x = kind(v)
    except (TypeError, ValueError, OverflowError):
        raise GpubpError(f"schedule {what} must be a number, got {v!r}") from None
    if (kind is float and not math.isfinite(x)) or not ok(x):
        raise GpubpError(f"schedule {what} must be {rule}, got {v!r}")
    return x


class Schedule:
    """``eta(base, epoch)``: the learning rate of ``epoch`` (from 0); ``observe(accuracy)`` after each
    epoch with a validation accuracy: True when the schedule says stop (plateau only)."""

    def __init__(self, name="constant", warmup=0, gamma=None, step_size=10, epochs=None, floor=0.0, patience=10,
                 factor=2.0):
        name = str(name).strip().lower()
        if name not in SCHEDULES:
            raise GpubpError(f"unknown schedule {name!r}: choose one of {', '.join(SCHEDULES)}")
        self.name = name
        self.warmup = _check("warmup", warmup, int, lambda v: v >= 0, ">= 0 epochs")
        default_gamma = {"step": 0.5, "exp": 0.95}.get(name, 1.0)
        self.gamma = _check("gamma", default_gamma if gamma is None else gamma, float, lambda v: 0 < v <= 1,
                            "in (0, 1]")
        self.step_size = _check("step size", step_size, int, lambda v: v >= 1, ">= 1 epoch")
        self.floor = _check("floor", floor, float, lambda v: 0 <= v <= 1, "in [0, 1]")
        self.patience = _check("patience", patience, int, lambda v: v >= 1, ">= 1 epoch")
        self.factor = _check("factor", factor, float, lambda v: v > 1, "> 1")
        if name == "cosine":
            if epochs is None:
                raise GpubpError("the cosine schedule needs the run's length in epochs")
            self.epochs = _check("epochs", epochs, int, lambda v: v > self.warmup, f"> warmup ({self.warmup})")
        else:
            self.epochs = None if epochs is None else int(epochs)
        # plateau's state: divisions so far, the best accuracy, epochs since it
        self.divisions, self.best, self.since = 0, None, 0

    def eta(self, base: float, epoch: int) -> float:
        """The learning rate of epoch ``epoch`` (counted from 0 over the network's life)."""
        if epoch < self.warmup:
            return base * (epoch + 1) / (self.warmup + 1)
        t = epoch - self.warmup
        if self.name == "step":
            return base * self.gamma ** (t // self.step_size)
        if self.name == "exp":
            return base * self.gamma ** t
        if self.name == "cosine":
            T = self.epochs - self.warmup
            return base * (self.floor + (1 - self.floor) * (1 + math.cos(math.pi * min(t, T) / T)) / 2)
        if self.name == "plateau":
            return base / self.factor ** self.divisions
        return base

    def observe(self, accuracy) -> bool:
        """Note an epoch's validation accuracy (None: nothing to note); True when training should stop."""
        if self.name != "plateau" or accuracy is None:
            return False
        if self.best is None or accuracy > self.best:
            self.best, self.since = accuracy, 0
            return False
        self.since += 1
        if self.since >= self.patience:
            self.divisions, self.since = self.divisions + 1, 0
        return self.factor ** self.divisions >= PLATEAU_STOP

    def config(self) -> dict:
        """The settings that rebuild this schedule (JSON-ready)."""
        return {"name": self.name, "warmup": self.warmup, "gamma": self.gamma, "step_size": self.step_size,
                "epochs": self.epochs, "floor": self.floor, "patience": self.patience, "factor": self.factor}

    def state(self) -> dict:
        return {"divisions": self.divisions, "best": self.best, "since": self.since}

    def load_state(self, state: dict) -> None:
        try:
            divisions, since = int(state["divisions"]), int(state["since"])
            best = None if state["best"] is None else float(state["best"])
        except (KeyError, TypeError, ValueError, OverflowError):
            raise GpubpError(f"a schedule's state must hold divisions, best and since, got {state!r}") from None
        if divisions < 0 or since < 0 or (best is not None and not 0 <= best <= 1):
            raise GpubpError(f"a schedule's state is out of range: {state!r}")
        self.divisions, self.best, self.since = divisions, best, since

    @classmethod
    def from_config(cls, cfg: dict, state: dict | None = None) -> Schedule:
        if not isinstance(cfg, dict):
            raise GpubpError(f"a schedule's settings must be a mapping, got {cfg!r}")
        unknown = set(cfg) - {"name", *DEFAULTS}
        if unknown:
            raise GpubpError(f"unknown schedule settings {sorted(unknown)}")
        s = cls(**cfg)
        if state is not None:
            s.load_state(state)
        return s

    def __repr__(self) -> str:
        return f"Schedule({self.name!r}, warmup={self.warmup})"


def make_schedule(schedule, epochs=None, **settings) -> Schedule:
    """A Schedule from a name (with ``settings`` and the run's length ``epochs``), or the one given."""
    if isinstance(schedule, Schedule):
        return schedule
    return Schedule("constant" if schedule is None else schedule, epochs=epochs, **settings)
