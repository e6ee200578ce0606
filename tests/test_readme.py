"""The README's code examples run as written."""
import re
from pathlib import Path

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_public_api_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    example = next(b for b in blocks if "from qsattn import PatchSampleF" in b)
    scope = {}
    exec(compile(example, "README.md", "exec"), scope)
    assert scope["loss"].item() > 0
    assert scope["ids"][3].shape == (1, 64) and scope["attn"][3].shape == (1, 64, 64)


def test_the_public_api_imports_outside_the_checkout(tmp_path):
    """The installed package (editable in .venv) is a regular package anywhere, not a namespace package."""
    import subprocess
    import sys

    code = "import qsattn; from qsattn import PatchSampleF, patch_nce_loss; print(qsattn.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("qsattn/__init__.py")
