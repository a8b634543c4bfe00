"""Dataset loaders, one per on-disk format (DESIGN section 5), not one per dataset.

A loader is ``fn(task_spec, data_root) -> TaskData`` and reads its arguments from ``task_spec.args``.
It registers under a name that suite files use as a task's ``loader``. A loader may also give an
``check_args`` function, so that a suite file with bad loader arguments fails when the suite loads,
not minutes later when the task is reached.
"""

# Built-in loaders register on import.
from . import coop, digits, fgvc, imagefolder, ofa_loaders, synthetic, vtab1k, world  # noqa: F401
from .registry import LoaderEntry, list_loaders, load_task, loader_entry, register_loader

__all__ = ["LoaderEntry", "list_loaders", "load_task", "loader_entry", "register_loader"]
