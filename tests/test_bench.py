"""`python -m qsattn bench` runs each case in a fresh process and writes one JSON line per case."""
import json
import subprocess
import sys


def test_bench_writes_json_lines_and_file(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--methods", "cut,qsattn-local", "--sizes", "32",
                           "--steps", "1", "--warmup", "1", "--ngf", "8", "--device", "cpu", "--impl", "chunked",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["table"], r["method"], r["impl"]) for r in lines] == [
        ("step", "cut", "-"), ("step", "qsattn-local", "chunked"), ("sampler", "cut", "-"), ("sampler", "qsattn-local", "chunked")]
    for r in lines:
        for key in ("method", "size", "device", "dtype", "impl", "sec_per_step", "images_per_s", "peak_mem_bytes"):
            assert key in r, key
        assert r["sec_per_step"] > 0 and r["peak_mem_bytes"] > r["base_mem_bytes"] > 0
    saved = json.loads(out.read_text())
    assert len(saved) == 4 and all("ratio_to_cut" in r and "mem_ratio_to_cut" in r for r in saved)
    assert saved[0]["ratio_to_cut"] == 1.0
    assert "overhead_pct_of_cut_step" in saved[3]
    assert "| step | qsattn-local | chunked | 32 |" in proc.stderr


def test_bench_imports_with_torch_alone():
    code = ("import sys, qsattn.bench, qsattn.model, qsattn.qs_chunked, qsattn.train, qsattn.data, qsattn.synthetic; "
            "bad = {'mlflow', 'cleanfid', 'submitit', 'pandas'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)
