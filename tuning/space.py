"""The search space of `imc tune`, declared in one place: `SPACE` below.

Each parameter is named by its configuration path, the same name `imc run --set` takes
(`verification.threshold`, `mapping.options.init_min_num_inliers`), so a trial's parameters
are a configuration override as they stand. `mapping.options.*` are pycolmap
`IncrementalPipelineOptions` (or mapper) attributes; their defaults are pycolmap's own.

Only the stages after matching are searched: keypoints, descriptors and raw matches are
computed once and shared by every trial (see `tuning.prepare`). `retrieval.num_neighbors`
selects a subset of the pairs matched once for the largest value of its range.

Narrowing (command line or a JSON file with the same keys):
    params  search only these (full path or the unique last component); others keep the
            base configuration's value
    exclude search everything but these
    ranges  new bounds: `name=LOW:HIGH` for numbers, `name=a|b|c` for choices
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from imc.config import merge, nested
from imc.errors import ImcError


@dataclass(frozen=True)
class Param:
    """One searched setting.

    name: configuration path (`section.key` or `mapping.options.key`).
    kind: "int", "float" or "choice". low/high: bounds (inclusive); log: sample in log space.
    choices: the values of a "choice" parameter.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()
    help: str = ""

    def contains(self, value: Any) -> bool:
        if self.kind == "choice":
            return value in self.choices
        return isinstance(value, int | float) and self.low <= value <= self.high


def _int(name, low, high, log=False, help=""):
    return Param(name, "int", low, high, log, help=help)


def _float(name, low, high, log=False, help=""):
    return Param(name, "float", float(low), float(high), log, help=help)


def _choice(name, choices, help=""):
    return Param(name, "choice", choices=tuple(choices), help=help)


M = "mapping.options."
# fmt: off
SPACE: tuple[Param, ...] = (
    # pairs, verification: cheap stages before mapping
    _int("retrieval.num_neighbors", 4, 16, help="pairs per image (datasets >= exhaustive_below)"),
    _float("verification.threshold", 0.25, 4.0, log=True, help="MAGSAC px, extraction scale"),
    _choice("verification.confidence", (0.999, 0.9999, 0.99999), help="MAGSAC confidence"),
    _int("verification.min_inliers", 8, 120, log=True, help="pairs with fewer are dropped"),
    # mapper: model bookkeeping
    _int("mapping.min_model_size", 3, 10, help="smaller models are outliers"),
    _int("mapping.max_num_models", 2, 50, log=True, help="models per dataset"),
    _float("mapping.global_fallback", 0.0, 1.0, help="coverage below which global mapping runs"),
    _int(M + "min_num_matches", 5, 60, log=True, help="pairs below it are ignored by COLMAP"),
    # mapper: initial pair
    _int(M + "init_min_num_inliers", 15, 200, log=True, help="inliers of the initial pair"),
    _float(M + "init_max_error", 1.0, 8.0, help="px, initial two-view geometry"),
    _float(M + "init_min_tri_angle", 2.0, 24.0, help="degrees, initial pair"),
    # mapper: registration and filtering
    _int(M + "abs_pose_min_num_inliers", 10, 80, log=True, help="2D-3D inliers to register"),
    _float(M + "abs_pose_max_error", 2.0, 16.0, help="px, absolute pose RANSAC"),
    _float(M + "filter_max_reproj_error", 1.0, 8.0, help="px, observations filtered above"),
    # bundle adjustment
    _choice(M + "ba_refine_focal_length", (True, False)),
    _choice(M + "ba_refine_principal_point", (False, True)),
    _choice(M + "ba_global_function_tolerance", (0.0, 1e-8, 1e-6, 1e-4), help="Ceres"),
    _float(M + "ba_global_max_refinement_change", 1e-4, 1e-2, log=True, help="stop refining"),
)
# fmt: on


def resolve_name(name: str, space: tuple[Param, ...] = SPACE) -> str:
    """Full parameter name from a full name or a unique last component."""
    names = [p.name for p in space]
    if name in names:
        return name
    hits = [n for n in names if n.rsplit(".", 1)[-1] == name]
    if len(hits) == 1:
        return hits[0]
    what = f"ambiguous ({', '.join(hits)})" if hits else "unknown"
    raise ImcError(f"search parameter '{name}' is {what} (valid: {', '.join(names)})")


def parse_range(param: Param, text: str) -> Param:
    """`LOW:HIGH` (numbers) or `a|b|c` (choices, JSON values) -> the narrowed parameter."""
    if param.kind == "choice":
        values = tuple(_json_value(v) for v in text.split("|"))
        return replace(param, choices=values)
    try:
        low, high = (float(v) for v in text.split(":"))
    except ValueError:
        raise ImcError(f"range of '{param.name}' must be LOW:HIGH, got '{text}'") from None
    if low > high or (param.log and low <= 0):
        raise ImcError(f"range of '{param.name}': bad bounds {low}:{high}")
    if param.kind == "int":
        if low != int(low) or high != int(high):
            raise ImcError(f"range of '{param.name}' takes integers, got '{text}'")
        low, high = int(low), int(high)
    return replace(param, low=low, high=high)


def _json_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def narrow(
    params: list[str] | None = None,
    exclude: list[str] | None = None,
    ranges: dict[str, Any] | None = None,
    space: tuple[Param, ...] = SPACE,
) -> tuple[Param, ...]:
    """The space restricted to `params` (all if None) minus `exclude`, with new `ranges`,
    in the order of `space`.

    ranges: name -> "LOW:HIGH" | "a|b|c" | [low, high] | {"choices": [...]}.
    """
    chosen = {resolve_name(n, space) for n in params} if params else {p.name for p in space}
    chosen -= {resolve_name(n, space) for n in exclude or []}
    out = {p.name: p for p in space if p.name in chosen}  # the declaration's order
    for raw, value in (ranges or {}).items():
        name = resolve_name(raw, space)
        if name not in out:
            raise ImcError(f"range given for '{name}', which is not searched")
        if isinstance(value, dict) and "choices" in value:
            value = "|".join(json.dumps(v) for v in value["choices"])
        elif isinstance(value, list | tuple):
            value = f"{value[0]}:{value[1]}"
        out[name] = parse_range(out[name], str(value))
    if not out:
        raise ImcError("the search space is empty")
    return tuple(out.values())


def load_space_file(path: str | Path) -> dict:
    """A JSON file `{"params": [...], "exclude": [...], "ranges": {...}}` (all keys optional)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ImcError(f"search space file {path}: {e}") from None
    unknown = set(data) - {"params", "exclude", "ranges"} if isinstance(data, dict) else {"?"}
    if unknown:
        raise ImcError(f"search space file {path}: unknown keys {sorted(unknown)}")
    return data


def pycolmap_default(key: str) -> Any:
    """imc's default of an incremental pipeline option (imc.colmap_options.INCREMENTAL_DEFAULTS),
    else pycolmap's, found as setting the option finds it (imc.colmap_options)."""
    from imc.colmap_options import option_default

    return option_default(key)


def get_value(conf: dict, name: str) -> Any:
    """The value `name` has in the configuration `conf` (pycolmap's default for an option
    the configuration leaves unset)."""
    section, *rest = name.split(".")
    if section == "mapping" and rest[0] == "options":
        options = conf["mapping"]["options"]
        return options[rest[1]] if rest[1] in options else pycolmap_default(rest[1])
    return conf[section][rest[0]]


def defaults(conf: dict, space: tuple[Param, ...]) -> dict[str, Any]:
    """name -> the value each searched parameter has in the base configuration."""
    return {p.name: get_value(conf, p.name) for p in space}


def to_override(params: dict[str, Any]) -> dict:
    """{"verification.threshold": 2.0, ...} -> {"verification": {"threshold": 2.0}, ...}."""
    return nested(params.items())


def apply(conf: dict, params: dict[str, Any]) -> dict:
    """The base configuration with `params` set (strictly merged: a bad name is an error)."""
    return merge(copy.deepcopy(conf), to_override(params))


def suggest(trial, space: tuple[Param, ...]) -> dict[str, Any]:
    """Ask an Optuna trial for a value of every parameter of `space`."""
    out = {}
    for p in space:
        if p.kind == "int":
            out[p.name] = trial.suggest_int(p.name, int(p.low), int(p.high), log=p.log)
        elif p.kind == "float":
            out[p.name] = trial.suggest_float(p.name, p.low, p.high, log=p.log)
        else:
            out[p.name] = trial.suggest_categorical(p.name, list(p.choices))
    return out


def describe(space: tuple[Param, ...]) -> list[dict]:
    """JSON-able description (stored with the study, printed in the report)."""
    out = []
    for p in space:
        d = {"name": p.name, "kind": p.kind}
        if p.kind == "choice":
            d["choices"] = list(p.choices)
        else:
            d.update(low=p.low, high=p.high, log=p.log)
        out.append(d)
    return out


def max_value(space: tuple[Param, ...], name: str, fallback: int) -> int:
    """The upper bound of `name` in `space`, or `fallback` when it is not searched."""
    for p in space:
        if p.name == name:
            return int(max(p.choices) if p.kind == "choice" else p.high)
    return fallback
