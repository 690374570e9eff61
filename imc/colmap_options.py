"""pycolmap pipeline options by name: one lookup for setting an option and for reading its default.

`mapping.options` names options without saying where pycolmap keeps them: on the pipeline
options themselves, or on one of their sub-option groups (`option_groups`). Setting a name sets
it on every group that has it; its default is that of the first group that has it. A name no
group has is an error that lists the valid ones.
"""

from __future__ import annotations

from typing import Any

import pycolmap

from .errors import ImcError

# Incremental-pipeline options where imc's default differs from pycolmap's; `mapping.options`
# overrides them. filter_max_reproj_error 2.3 (pycolmap: 4.0): found by `imc tune` on imc-bench,
# ETs 57.5 -> 66.7 and templeRing 75.2 -> 83.1, held-out fountain unchanged (BENCHMARKS.md).
INCREMENTAL_DEFAULTS = {"filter_max_reproj_error": 2.3}

SUB_GROUPS = ("mapper", "triangulation", "bundle_adjustment", "global_positioning")
PIPELINE_OPTIONS = {
    "incremental": pycolmap.IncrementalPipelineOptions,
    "global": pycolmap.GlobalPipelineOptions,
}


def option_groups(options) -> list:
    """The pipeline options, then those of its SUB_GROUPS it has, then the mapper's
    bundle_adjustment and global_positioning groups where it has them, in this order."""
    groups = [options] + [getattr(options, s) for s in SUB_GROUPS if hasattr(options, s)]
    groups += [getattr(options.mapper, s) for s in SUB_GROUPS[2:] if hasattr(options.mapper, s)]
    return groups


def groups_with(options, key: str) -> list:
    """The option groups of `options` (see option_groups) that have `key`, in order.

    Raises ImcError listing every option name of every group when none has it.
    """
    groups = option_groups(options)
    hits = [g for g in groups if hasattr(g, key)]
    if not hits:
        valid = sorted(
            {
                a
                for g in groups
                for a in dir(g)
                if not a.startswith("_") and not callable(getattr(g, a))
            }
        )
        raise ImcError(f"unknown mapping option '{key}' (valid: {', '.join(valid)})")
    return hits


def set_option(options, key: str, value: Any) -> None:
    """Set `key` on the pipeline options and on every sub-option group that has it."""
    for group in groups_with(options, key):
        setattr(group, key, value)


def option_default(key: str, mapper: str = "incremental") -> Any:
    """imc's default of an option of the `mapper` pipeline ("incremental": INCREMENTAL_DEFAULTS
    first), else pycolmap's: that of the first option group that has it."""
    if mapper not in PIPELINE_OPTIONS:
        raise ImcError(f"unknown mapper '{mapper}' (valid: {', '.join(sorted(PIPELINE_OPTIONS))})")
    if mapper == "incremental" and key in INCREMENTAL_DEFAULTS:
        return INCREMENTAL_DEFAULTS[key]
    options = PIPELINE_OPTIONS[mapper]()
    return getattr(groups_with(options, key)[0], key)
