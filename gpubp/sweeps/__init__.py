"""Sweeps: many training runs, planned (plan), trained K at a time as one Stack (stack, run) here
or as Ray tasks (ray), and reported (report). ``from gpubp.sweeps import grid, sweep, summary``."""

from .plan import DEFAULT_GROUP_SIZE, PER_RUN, SHARED, grid, groups, normalize, parse_seeds
from .report import plot, summary, table
from .run import Group, result, sweep, train_group

__all__ = ["DEFAULT_GROUP_SIZE", "PER_RUN", "SHARED", "Group", "grid", "groups", "normalize", "parse_seeds", "plot",
           "result", "summary", "sweep", "table", "train_group"]
