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
