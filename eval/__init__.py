"""Metrics of the harness, one module per metric, registered by name in `eval.registry`.

    fid, kid        eval/fid.py (through clean-fid; modes clean and legacy_pytorch)
    cityscapes_seg  eval/segmentation.py (DRN-D-22 / DRN-D-105 on Cityscapes labels→photos)

`evaluate_folder_pair(gen_dir, ref_dir, metrics=...)` is the single call for scoring a folder.
Heavy modules (torch, clean-fid) load only when a metric runs.
"""
from eval.folders import EvalError, check_coverage
from eval.registry import evaluate_folder_pair, list_metrics, register_metric

__all__ = ["EvalError", "check_coverage", "evaluate_folder_pair", "list_metrics", "register_metric"]
