"""Dataset loaders, one per on-disk format (DESIGN section 5), not one per dataset.

A format module registers one :class:`DatasetFormat` in ``FORMATS`` under the name suite files use
as a task's ``loader``: its loader ``fn(task_spec, data_root) -> TaskData`` (arguments from
``task_spec.args``), the ``check_args`` that makes a suite file with bad arguments fail when the
suite loads, and for data on disk how ``bench data check`` lists a task and where its data comes
from (and what ``bench data prepare --download`` fetches).
"""

# Built-in formats register on import.
from . import coop, digits, fgvc, imagefolder, ofa_loaders, synthetic, vtab1k, world  # noqa: F401
from .registry import FORMATS, Archive, DatasetFormat, Download, list_task, load_task

__all__ = ["FORMATS", "Archive", "DatasetFormat", "Download", "list_task", "load_task"]
