"""Expanding a grid file is a pure function: cells, ids, names, run folders, overrides, errors."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from slurm.grid import GridError, cell_id, expand, select

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, grid: dict, name: str = "g.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(grid, sort_keys=False))
    return path


def test_table1_is_five_methods_by_three_datasets_by_three_seeds():
    cells = expand(ROOT / "experiments" / "table1.yaml")
    assert len(cells) == 5 * 3 * 3
    assert {c.method for c in cells} == {"cut", "fastcut", "qsattn-global", "qsattn-local", "qsattn-global-local"}
    assert {c.dataset for c in cells} == {"horse2zebra", "cat2dog", "cityscapes"}
    assert {c.seed for c in cells} == {0, 1, 2}
    assert len({c.id for c in cells}) == len({c.run_dir for c in cells}) == len(cells)
    fastcut = next(c for c in cells if c.method == "fastcut")
    assert (fastcut.config.n_epochs, fastcut.config.n_epochs_decay, fastcut.config.nce_idt) == (150, 50, False)
    qs_local = next(c for c in cells if c.method == "qsattn-local")
    assert qs_local.config.qs_mode == "local" and qs_local.config.local_layout == "official"
    assert all(c.config.direction == "AtoB" for c in cells if c.dataset == "cityscapes")


def test_ablations_and_demo_grids_expand():
    ablations = expand(ROOT / "experiments" / "ablations.yaml")
    labels = {c.ablation for c in ablations}
    assert "num-patches-num_patches64" in labels and "random-selection" in labels
    assert {c.config.num_patches for c in ablations if c.ablation.startswith("num-patches")} == {64, 128, 256}
    assert {c.config.qs_layers for c in ablations if c.ablation.startswith("qs-layers")} == {(4,), (3, 4), (2, 3, 4)}
    assert {c.config.local_layout for c in ablations if c.ablation == "local-layout"} == {"corrected"}
    assert {c.config.qs_selection for c in ablations if c.ablation == "random-selection"} == {"random"}
    assert all(c.ablation for c in ablations)  # include_base: false
    demo = expand(ROOT / "experiments" / "demo.yaml")
    assert [c.method for c in demo] == ["cut", "fastcut", "qsattn-global"]
    assert all(c.config.device == "cpu" and c.config.crop_size <= 64 for c in demo)


def test_ids_are_stable_and_ignore_where_runs_are_recorded(tmp_path):
    grid = {"defaults": {"run_root": "a", "tracking_uri": "sqlite:///a.db"}, "methods": ["cut"],
            "datasets": ["synthetic"], "seeds": [0, 1]}
    first = expand(write(tmp_path, grid))
    assert [c.id for c in first] == [c.id for c in expand(write(tmp_path, grid))]
    moved = dict(grid, defaults={"run_root": "b", "tracking_uri": "http://127.0.0.1:5000", "log_every": 7})
    assert [c.id for c in expand(write(tmp_path, moved))] == [c.id for c in first]
    changed = dict(grid, defaults={"run_root": "a", "lr": 0.001})
    assert not {c.id for c in expand(write(tmp_path, changed))} & {c.id for c in first}
    faster = dict(grid, defaults={"run_root": "a", "adam_impl": "fused", "compile": "default", "pin_memory": False})
    assert [c.id for c in expand(write(tmp_path, faster))] == [c.id for c in first]  # same experiment, run faster
    bf16 = dict(grid, defaults={"run_root": "a", "amp": "bf16"})  # changes numerics: another experiment
    assert not {c.id for c in expand(write(tmp_path, bf16))} & {c.id for c in first}
    assert first[0].id == cell_id(first[0].config)


def test_names_and_run_folders_are_readable_and_distinct(tmp_path):
    cells = expand(write(tmp_path, {"name": "study", "methods": ["cut"], "datasets": ["synthetic"], "seeds": [3]}))
    (cell,) = cells
    assert cell.name == "cut-synthetic-s3"
    assert cell.config.name == f"cut-synthetic-s3-{cell.id[:8]}"
    assert cell.run_dir == Path("runs") / "study" / cell.config.name
    assert cell.config.experiment == "study"
    assert not (tmp_path / "runs").exists()  # pure: nothing written


def test_overrides_apply_defaults_then_dataset_then_method_then_cells(tmp_path):
    grid = {
        "defaults": {"lr": 0.1, "ngf": 16, "ndf": 16},
        "datasets": {"synthetic": {"lr": 0.2, "ngf": 8}, "other": None},
        "methods": {"cut": {"lr": 0.3}, "fastcut": None},
        "seeds": [0],
        "cells": [{"match": {"method": "fastcut", "dataset": "other"}, "set": {"ndf": 4}}],
    }
    by_name = {c.name: c.config for c in expand(write(tmp_path, grid))}
    assert (by_name["cut-synthetic-s0"].lr, by_name["cut-synthetic-s0"].ngf) == (0.3, 8)
    assert (by_name["fastcut-synthetic-s0"].lr, by_name["fastcut-synthetic-s0"].ngf) == (0.2, 8)
    assert (by_name["fastcut-other-s0"].lr, by_name["fastcut-other-s0"].ndf) == (0.1, 4)
    assert by_name["cut-other-s0"].ndf == 16
    # a method's preset still applies under the grid's values (FastCUT's lambda_NCE)
    assert by_name["fastcut-other-s0"].lambda_NCE == 10.0


def test_named_ablations_vary_keys(tmp_path):
    grid = {"datasets": ["synthetic"], "seeds": [0], "include_base": False,
            "ablations": {"n": {"methods": ["qsattn-global"], "set": {"qs_impl": "chunked"},
                                "vary": {"num_patches": [16, 32], "nce_T": [0.07, 0.1]}}}}
    cells = expand(write(tmp_path, grid))
    assert sorted(c.ablation for c in cells) == ["n-num_patches16-nce_T0.07", "n-num_patches16-nce_T0.1",
                                                 "n-num_patches32-nce_T0.07", "n-num_patches32-nce_T0.1"]
    assert all(c.config.qs_impl == "chunked" for c in cells)


def test_a_bad_key_names_the_file_and_the_cell(tmp_path):
    path = write(tmp_path, {"methods": ["cut"], "datasets": {"synthetic": {"num_patchs": 3}}, "seeds": [0]})
    with pytest.raises(GridError, match=r"g\.yaml: cell cut-synthetic-s0: unknown config key 'num_patchs'.*num_patches"):
        expand(path)
    with pytest.raises(GridError, match="unknown method 'cutt'"):
        expand(write(tmp_path, {"methods": ["cutt"], "datasets": ["synthetic"]}))
    with pytest.raises(GridError, match="unknown grid keys"):
        expand(write(tmp_path, {"method": ["cut"], "datasets": ["synthetic"]}))
    with pytest.raises(GridError, match="same resolved config"):
        expand(write(tmp_path, {"methods": ["cut"], "datasets": ["synthetic"], "seeds": [1, 1]}))


def test_only_selects_cells_by_config_key_name_or_id(tmp_path):
    cells = expand(ROOT / "experiments" / "table1.yaml")
    assert len(select(cells, ["method=cut"])) == 9
    assert len(select(cells, ["method=cut", "dataset=cityscapes"])) == 3
    assert len(select(cells, ["method=cut", "method=fastcut", "seed=0"])) == 6
    assert len(select(cells, ["method=cut|fastcut"])) == 18
    assert select(cells, [f"id={cells[4].id[:6]}"]) == [cells[4]]
    with pytest.raises(GridError, match="neither a config key"):
        select(cells, ["colour=red"])


def test_a_cells_match_typo_is_an_error_with_the_closest_key_or_value(tmp_path):
    base = {"methods": ["cut", "fastcut"], "datasets": ["synthetic"], "seeds": [0]}
    with pytest.raises(GridError, match=r"cells\[0\]\.match: unknown key 'methd'\. Did you mean 'method'\?"):
        expand(write(tmp_path, dict(base, cells=[{"match": {"methd": "fastcut"}, "set": {"ndf": 4}}])))
    with pytest.raises(GridError, match=r"cells\[1\]\.match: no cell has method=fastcutt, so its 'set' would apply "
                                        r"nowhere\. Did you mean 'fastcut'\? Values of method in this grid: cut, fastcut"):
        expand(write(tmp_path, dict(base, cells=[{"match": {"method": "cut"}, "set": {"ndf": 8}},
                                                 {"match": {"method": "fastcutt"}, "set": {"ndf": 4}}])))
    with pytest.raises(GridError, match=r"cells\[0\]\.match: seed: expected int, got 'zero'"):
        expand(write(tmp_path, dict(base, cells=[{"match": {"seed": "zero"}, "set": {"ndf": 4}}])))
    with pytest.raises(GridError, match="matches no cell: no cell has all these values at once"):
        expand(write(tmp_path, dict(base, ablations={"x": {"methods": ["fastcut"], "set": {"ndf": 16}}},
                                    cells=[{"match": {"method": "cut", "ablation": "x"}, "set": {"ndf": 4}}])))


def test_cells_match_compares_typed_values_including_defaults(tmp_path):
    grid = {"methods": ["cut", "fastcut"], "datasets": ["synthetic"], "seeds": [0],
            "cells": [{"match": {"netG": "resnet_9blocks", "nce_idt": "false"}, "set": {"ndf": 4}},  # fastcut's preset
                      {"match": {"lr": "2e-4", "method": "cut"}, "set": {"ndf": 8}}]}
    by_method = {c.method: c.config for c in expand(write(tmp_path, grid))}
    assert by_method["fastcut"].ndf == 4 and by_method["cut"].ndf == 8


def test_an_empty_seed_list_says_what_is_wrong(tmp_path):
    with pytest.raises(GridError, match=r"'seeds: \[\]' lists no seed"):
        expand(write(tmp_path, {"methods": ["cut"], "datasets": ["synthetic"], "seeds": []}))
    with pytest.raises(GridError, match="no cells"):
        expand(write(tmp_path, {"datasets": ["synthetic"], "include_base": False}))
