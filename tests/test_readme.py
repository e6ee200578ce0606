"""The README's code examples run as written, and its layout table matches the tree."""
import fnmatch
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


def _layout_table() -> dict[str, str]:
    section = README.split("## Layout", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([^`]+)` \| (.*) \|$", section, re.M))


def test_the_layout_table_matches_the_tree():
    root = Path(__file__).resolve().parents[1]
    table = _layout_table()
    missing = [path for path in table if not (root / path).exists()]
    assert not missing, f"README's layout table names paths that do not exist: {missing}"
    ignored = [line.rstrip("/") for line in (root / ".gitignore").read_text().splitlines() if line.endswith("/")]
    folders = {p.name + "/" for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
               and not any(fnmatch.fnmatch(p.name, pattern) for pattern in ignored)}
    rooms = {f"qsattn/{p.parent.name}/" for p in (root / "qsattn").glob("*/__init__.py")}
    unlisted = sorted((folders | rooms) - set(table))
    assert not unlisted, f"folders missing from README's layout table: {unlisted}"
    tools = {p.name for p in (root / "tools").iterdir() if p.is_file()}
    named = set(re.findall(r"`([^`/]+\.\w+)`", table["tools/"]))
    assert tools == named, f"tools/ holds {sorted(tools)}, the layout table names {sorted(named)}"
