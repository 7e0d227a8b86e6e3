"""Sweeps: many training runs, planned (plan), trained group by group through the epoch driver, as
one Stack (stack) on a GPU or as networks over the cores on a CPU (run), here or as Ray tasks (ray),
and reported (report). ``from gpubp.sweeps import grid, sweep, summary``."""

from .plan import DEFAULT_GROUP_SIZE, PER_RUN, SHARED, grid, groups, normalize, parse_seeds
from .report import plot, summary, table
from .run import Group, SweepInterrupted, result, stacks_pay, sweep, train_group

__all__ = ["DEFAULT_GROUP_SIZE", "PER_RUN", "SHARED", "Group", "grid", "groups", "normalize", "parse_seeds", "plot",
           "result", "stacks_pay", "summary", "sweep", "SweepInterrupted", "table", "train_group"]
