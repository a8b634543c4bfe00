"""Tuning methods: the interface, the entry-point registry, one module per method."""

from .base import Callback, Method, Stage
from .registry import get_method, method_entries

__all__ = ["Callback", "Method", "Stage", "get_method", "method_entries"]
