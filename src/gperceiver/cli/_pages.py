"""Imported by :mod:`gperceiver.cli` before any command module: every command
then runs torch with 2 MB pages for its large tensors, a setting torch reads once,
when it is imported (:func:`gperceiver.allocator.huge_pages_for_torch`)."""

from ..allocator import huge_pages_for_torch

huge_pages_for_torch()
