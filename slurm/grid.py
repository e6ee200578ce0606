"""Experiment grids: one YAML file describes a whole study; `expand` turns it into cells.

A grid file (see experiments/table1.yaml)::

    name: table1                 # optional; default: the file's stem. Run folders: <run_root>/<name>-<id8>
    defaults: {key: value}       # config keys shared by every cell (run_root, data_root, tracking_uri, ...)
    methods: [cut, fastcut]      # or a mapping  method -> {key: value} (per-method overrides)
    datasets: [horse2zebra]      # or a mapping  dataset -> {key: value} (per-dataset overrides)
    seeds: [0, 1, 2]
    cells:                       # optional per-cell overrides, applied where every `match` key is equal
      - match: {method: fastcut, dataset: cityscapes}   # config keys (or `ablation`), compared as typed
        set: {n_epochs: 100}     # values; a key or value that matches no cell is an error
    ablations:                   # optional named variants, each its own cells
      num-patches:
        methods: [qsattn-global] # default: the grid's methods; `datasets`, `seeds` likewise
        set: {key: value}        # applied to every cell of the ablation
        vary: {num_patches: [64, 128, 256]}   # one cell per value (several keys: their product)
    include_base: true           # false: only the ablations' cells (default: true when methods are listed)

Resolution of one cell: Config defaults <- method preset <- grid defaults <- dataset overrides <- method
overrides <- ablation `set` and `vary` <- matching `cells` entries. Every cell is validated by
`qsattn.engine.config.resolve`; a bad key is an error naming the file and the cell.

A cell's id is a hash of its resolved config without the keys whose role is `runtime` or `evaluation`
(`qsattn.engine.config`: where runs and logs go, how often to log, how a finished run is scored), so moving the
run root or the MLflow store, or re-scoring under another protocol, keeps the ids, and any change that
can change a trained model gives a new id and a new run folder.
"""
from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qsattn.engine.config import (FIELDS, NOT_IN_CELL_ID, Config, ConfigError, apply, coerce, preset, resolve, show,
                           split_key_value)
from qsattn.errors import did_you_mean

GRID_KEYS = {"name", "defaults", "methods", "datasets", "seeds", "cells", "ablations", "include_base",
             "description"}
ABLATION_KEYS = {"methods", "datasets", "seeds", "set", "vary", "description"}


class GridError(ConfigError):
    """A grid file the user must fix; the message names the file and the cell."""


@dataclass(frozen=True)
class Cell:
    id: str                 # 12 hex digits of the hash of the resolved config minus runtime/evaluation keys
    name: str               # readable: <method>-<dataset>-s<seed>[-<ablation>[-<key><value>]]
    method: str
    dataset: str
    seed: int
    ablation: str           # "" for the base grid
    config: Config = field(compare=False)
    overrides: dict = field(default_factory=dict, compare=False)   # the grid's values for this cell

    @property
    def run_dir(self) -> Path:
        return Path(self.config.run_root) / self.config.run_name()

    def matches(self, key: str, value: str) -> bool:
        """`--only key=value`: a config key, or one of id, name, ablation (prefix match for id)."""
        if key == "id":
            return self.id.startswith(value)
        if key in ("name", "ablation", "grid_name"):
            return str(getattr(self, "name" if key == "grid_name" else key)) == value
        if not hasattr(self.config, key):
            raise GridError(f"--only {key}={value}: '{key}' is neither a config key nor one of id, name, ablation")
        actual = getattr(self.config, key)
        if isinstance(actual, tuple):
            actual = ",".join(map(str, actual))
        return str(actual).lower() == str(value).lower()


def cell_id(cfg: Config) -> str:
    values = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.to_dict().items()
              if k not in NOT_IN_CELL_ID}
    blob = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _as_mapping(value: Any, what: str, where: str) -> dict[str, dict]:
    if value is None:
        return {}
    if isinstance(value, (list, tuple)):
        return {str(v): {} for v in value}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if v is not None and not isinstance(v, dict):
                raise GridError(f"{where}: {what} '{k}' must map to a mapping of config keys, got {v!r}")
            out[str(k)] = dict(v or {})
        return out
    raise GridError(f"{where}: '{what}' must be a list or a mapping, got {type(value).__name__}")


def _seeds(value: Any, where: str) -> list[int]:
    if value is None:
        return [0]
    items = value if isinstance(value, (list, tuple)) else [value]
    if not items:
        raise GridError(f"{where}: 'seeds: []' lists no seed, so the grid has no cells; list at least one "
                        f"(e.g. seeds: [0]) or leave the key out (seed 0)")
    try:
        return [int(s) for s in items]
    except (TypeError, ValueError):
        raise GridError(f"{where}: seeds must be integers, got {value!r}") from None


MATCH_KEYS = ("ablation",)  # besides the config keys


def _match_rules(cell_rules: Any, where: str) -> list[tuple[dict, dict]]:
    """`cells` entries as (match, set), every match key a config key (or `ablation`), each value typed as
    that key: a typo is an error with the closest key, never a rule that silently applies nowhere."""
    if not isinstance(cell_rules, list) or any(not isinstance(r, dict) or set(r) - {"match", "set"}
                                                for r in cell_rules):
        raise GridError(f"{where}: 'cells' is a list of {{match: {{...}}, set: {{...}}}} entries")
    rules = []
    for i, rule in enumerate(cell_rules):
        match, values = rule.get("match") or {}, rule.get("set") or {}
        if not isinstance(match, dict) or not match or not isinstance(values, dict):
            raise GridError(f"{where}: cells[{i}]: 'match' is a non-empty mapping of config keys, 'set' a mapping")
        typed = {}
        for key, value in match.items():
            if key not in FIELDS and key not in MATCH_KEYS:
                hint = did_you_mean(key, [*FIELDS, *MATCH_KEYS])
                raise GridError(f"{where}: cells[{i}].match: unknown key '{key}'.{hint} Match on config keys "
                                f"(`python -m qsattn methods NAME`) or 'ablation'")
            typed[key] = _typed(key, value, f"{where}: cells[{i}].match")
        rules.append((typed, values))
    return rules


def _typed(key: str, value: Any, where: str) -> Any:
    if key in MATCH_KEYS:
        return str(value)
    try:
        return coerce(key, value)
    except ConfigError as exc:
        raise GridError(f"{where}: {exc}") from None


def _unmatched(rule_index: int, match: dict, seen: list[dict], where: str) -> GridError:
    """Why a `cells` rule matched no cell: the value no cell has (with the closest that some cell has)."""
    for key, value in match.items():
        taken = {show(c[key]) for c in seen if key in c}
        if show(value) not in taken:
            hint = did_you_mean(show(value), sorted(taken))
            values = ", ".join(v or "''" for v in sorted(taken))
            return GridError(f"{where}: cells[{rule_index}].match: no cell has {key}={show(value)}, so its 'set' "
                             f"would apply nowhere.{hint} Values of {key} in this grid: {values}")
    return GridError(f"{where}: cells[{rule_index}].match {match} matches no cell: no cell has all these values at once")


def _fmt(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(str, value))
    return str(value).replace(",", "-").replace("+", "")


def load_grid(path: str | Path) -> dict:
    import yaml

    text = Path(path).read_text()
    data = yaml.safe_load(text) or {}
    if not isinstance(data, dict):
        raise GridError(f"{path}: a grid file is a mapping (defaults, methods, datasets, seeds, ...)")
    return data


def expand(grid_yaml: str | Path, grid: dict | None = None) -> list[Cell]:
    """The cells of a grid file, in a stable order. Pure: reads the file (or takes `grid`), runs nothing."""
    where = str(grid_yaml)
    data = load_grid(grid_yaml) if grid is None else grid
    unknown = set(data) - GRID_KEYS
    if unknown:
        raise GridError(f"{where}: unknown grid keys {sorted(unknown)}; valid: {sorted(GRID_KEYS)}")
    grid_name = str(data.get("name") or Path(grid_yaml).stem)
    defaults = dict(data.get("defaults") or {})
    if "name" in defaults:
        raise GridError(f"{where}: 'name' is set by the grid for each cell; remove it from defaults")
    defaults.setdefault("run_root", str(Path("runs") / grid_name))
    defaults.setdefault("experiment", grid_name)
    methods = _as_mapping(data.get("methods"), "methods", where)
    datasets = _as_mapping(data.get("datasets"), "datasets", where)
    if not datasets:
        raise GridError(f"{where}: no datasets; list at least one (e.g. datasets: [synthetic])")
    seeds = _seeds(data.get("seeds"), where)
    cell_rules = _match_rules(data.get("cells") or [], where)
    ablations = data.get("ablations") or {}
    if not isinstance(ablations, dict):
        raise GridError(f"{where}: 'ablations' maps a name to {{methods, datasets, seeds, set, vary}}")
    include_base = data.get("include_base", bool(methods))

    # (ablation, variant values, method, dataset, seed)
    specs: list[tuple[str, dict, str, str, int]] = []
    if include_base:
        if not methods:
            raise GridError(f"{where}: no methods; list at least one (see `python -m qsattn methods`)")
        specs += [("", {}, m, d, s) for m in methods for d in datasets for s in seeds]
    for ab_name, ab in ablations.items():
        ab_where = f"{where}: ablation '{ab_name}'"
        if not isinstance(ab, dict) or set(ab) - ABLATION_KEYS:
            raise GridError(f"{ab_where}: expected a mapping with keys among {sorted(ABLATION_KEYS)}")
        ab_methods = list(_as_mapping(ab["methods"], "methods", ab_where)) if "methods" in ab else list(methods)
        ab_datasets = list(_as_mapping(ab["datasets"], "datasets", ab_where)) if "datasets" in ab else list(datasets)
        ab_seeds = _seeds(ab["seeds"], ab_where) if "seeds" in ab else seeds
        if not ab_methods:
            raise GridError(f"{ab_where}: no methods")
        vary = ab.get("vary") or {}
        if not isinstance(vary, dict) or any(not isinstance(v, list) or not v for v in vary.values()):
            raise GridError(f"{ab_where}: 'vary' maps a config key to a non-empty list of values")
        keys = list(vary)
        for combo in itertools.product(*(vary[k] for k in keys)) if keys else [()]:
            values = dict(ab.get("set") or {}, **dict(zip(keys, combo)))
            variant = "-".join(f"{k}{_fmt(v)}" for k, v in zip(keys, combo))
            label = ab_name + (f"-{variant}" if variant else "")
            specs += [(label, values, m, d, s) for m in ab_methods for d in ab_datasets for s in ab_seeds]

    if not specs:
        raise GridError(f"{where}: the grid has no cells (include_base: false and no ablations)")
    cells: list[Cell] = []
    seen: dict[str, str] = {}
    matched = [0] * len(cell_rules)
    compared: list[dict] = []  # each cell's typed values as the rules saw them (for a rule that matched none)
    for label, ab_values, method, dataset, seed in specs:
        readable = f"{method}-{dataset}-s{seed}" + (f"-{label}" if label else "")
        values = dict(defaults)
        values.update(datasets.get(dataset, {}))
        values.update(methods.get(method, {}))
        values.update(ab_values)
        values.update(method=method, dataset=dataset, seed=seed)
        for i, (match, updates) in enumerate(cell_rules):
            current = _as_compared(values, label, method, match)
            compared.append(current)
            if all(current.get(k) == v for k, v in match.items()):
                values.update(updates)
                matched[i] += 1
        if "name" in values:
            raise GridError(f"{where}: cell {readable}: 'name' is set by the grid; remove it")
        try:
            cfg = resolve(values)
        except ConfigError as exc:
            raise GridError(f"{where}: cell {readable}: {exc}") from None
        cid = cell_id(cfg)
        if cid in seen:
            raise GridError(f"{where}: cells {seen[cid]} and {readable} have the same resolved config; "
                            "remove the duplicate")
        seen[cid] = readable
        cfg = dataclasses.replace(cfg, name=f"{readable}-{cid[:8]}")
        cells.append(Cell(id=cid, name=readable, method=method, dataset=dataset, seed=seed, ablation=label,
                          config=cfg, overrides=values))
    for i, (match, _) in enumerate(cell_rules):
        if not matched[i]:
            raise _unmatched(i, match, compared, where)
    return cells


def _as_compared(values: dict, ablation: str, method: str, match: dict) -> dict:
    """The match keys' values of a cell so far, typed: the grid's values over the method's preset and the
    defaults (so `match: {netG: resnet_9blocks}` matches a cell that never names netG)."""
    try:
        base = apply(Config(), preset(method)).to_dict()
    except ConfigError:
        base = {}  # an unknown method: resolve() reports it below
    out = {"ablation": ablation}
    for key in match:
        if key in FIELDS:
            raw = values.get(key, base.get(key))
            try:
                out[key] = coerce(key, raw)
            except ConfigError:
                out[key] = raw  # a bad value: resolve() reports it below
    return out


def select(cells: list[Cell], only: list[str] | None) -> list[Cell]:
    """`--only key=value ...`: the same key repeated is OR, different keys are AND; `key=a|b` is OR too."""
    wanted: dict[str, list[str]] = {}
    for item in only or []:
        key, value = split_key_value(item, "--only", GridError)
        wanted.setdefault(key, []).extend(v.strip() for v in value.split("|"))
    return [c for c in cells if all(any(c.matches(k, v) for v in vs) for k, vs in wanted.items())]
