"""The config's field metadata: every key documented, its range and choices enforced, its role deciding
the sweep cell id and what may change on resume."""
from pathlib import Path

import pytest

from qsattn.engine.config import FIELDS, NOT_IN_CELL_ID, RESUMABLE_KEYS, RETIRED_KEYS, ROLES, Config, ConfigError, markdown_reference, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_every_key_has_a_meaning_a_section_and_a_role():
    for name, f in FIELDS.items():
        assert f.metadata["help"].strip(), name
        assert f.metadata["section"], name
        assert f.metadata["role"] in ROLES, name

def test_defaults_satisfy_their_own_metadata():
    resolve({})  # validate() checks every key's choices and range
    for name, f in FIELDS.items():
        if f.metadata["choices"]:
            assert getattr(Config(), name) in f.metadata["choices"], name

@pytest.mark.parametrize("key,value,message", [
    ("lr", "inf", "lr: must be a finite number"),
    ("lr", "0", "lr: must be > 0"),
    ("max_steps", "-1", "max_steps: must be >= 0"),
    ("checkpoint_every", "-3", "checkpoint_every: must be >= 0"),
    ("beta1", "1", "beta1: must be < 1"),
    ("num_patches", "0", "num_patches: must be >= 1"),
    ("nce_T", "nan", "nce_T: must be a finite number"),
    ("qs_mode", "globl", "Did you mean 'global'"),
    ("nce_layers", "0,-4", "nce_layers: expected non-negative"),
    ("nce_layers", "0,16,12", r"nce_layers: expected increasing layer indices without repeats, got \[0, 16, 12\]; use 0,12,16"),
    ("nce_layers", "0,4,4", "nce_layers: expected increasing"),
    ("device", "gpu", r"device: 'gpu' is not auto, cpu, cuda or cuda:N .* Did you mean 'cuda:0'"),
    ("device", "cuda0", "device: 'cuda0' is not"),
    ("device", "cpu:x", "device: 'cpu:x' is not"),
    ("load_size", "200", "load_size=200 is smaller than crop_size=256: preprocess=resize_and_crop resizes"),
    ("max_images", "1.5", "max_images: expected int, got '1.5'"),
    ("deterministic", "maybe", r"deterministic: expected a boolean \(true/false\), got 'maybe'"),
])
def test_out_of_range_values_are_one_clear_error(key, value, message):
    with pytest.raises(ConfigError, match=message):
        resolve({key: value})

def test_roles_decide_the_cell_id_and_resume_key_sets():
    roles = {name: f.metadata["role"] for name, f in FIELDS.items()}
    assert NOT_IN_CELL_ID == {k for k, r in roles.items() if r in ("runtime", "evaluation")}
    assert RESUMABLE_KEYS == NOT_IN_CELL_ID | {k for k, r in roles.items() if r == "resumable"} | set(RETIRED_KEYS)
    # what a trained model depends on stays in the id and must match on resume
    for key in ("lr", "qs_mode", "num_patches", "seed", "amp", "matmul_tf32", "deterministic", "dataset"):
        assert key not in RESUMABLE_KEYS, key
    # evaluation settings can change after training (re-score without retraining)
    assert {"fid_modes", "eval_checkpoints", "drn_arch", "drn_sha256", "eval_metrics", "inception_weights",
            "drn_weights"} <= NOT_IN_CELL_ID & RESUMABLE_KEYS
    # the speed options that keep the maths are runtime keys
    assert {"adam_impl", "compile", "cudnn_benchmark", "pin_memory"} <= NOT_IN_CELL_ID


def test_valid_devices_pass():
    for device in ("auto", "cpu", "cuda", "cuda:0", "cuda:7"):
        assert resolve({"device": device}).device == device


def test_docs_config_md_is_the_generated_reference():
    """docs/config.md comes from the field metadata; after adding or changing a key, regenerate it with
    `python -m qsattn methods --markdown > docs/config.md`."""
    text = markdown_reference()
    assert (ROOT / "docs" / "config.md").read_text() == text, "docs/config.md is out of date: regenerate it"
    for name, f in FIELDS.items():
        assert f"| `{name}` |" in text, name


def test_a_retired_key_is_read_as_its_replacement_and_never_blocks_a_resume():
    """Run folders and grids written when one FID mode was scored (`fid_mode: legacy_pytorch`) still load."""
    from qsattn.engine.checkpoint import config_mismatches
    from qsattn.engine.config import resolve

    cfg = resolve({"fid_mode": "legacy_pytorch"})
    assert cfg.fid_modes == "legacy_pytorch"
    saved = {**{k: list(v) if isinstance(v, tuple) else v for k, v in resolve({}).to_dict().items()},
             "fid_mode": "clean"}
    saved.pop("fid_modes")
    assert config_mismatches(saved, resolve({})) == []
