"""`python -m qsattn bench` runs each case in a fresh process and writes one JSON line per case."""
import json
import statistics
import subprocess
import sys


def test_bench_writes_json_lines_and_file(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--methods", "cut,qsattn-local", "--sizes", "32",
                           "--steps", "1", "--warmup", "1", "--ngf", "8", "--device", "cpu", "--impl", "chunked",
                           "--key-reuse", "never,always", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [(r["table"], r["method"], r["impl"], r.get("key_reuse")) for r in lines] == [
        ("step", "cut", "-", "never"), ("step", "cut", "-", "always"), ("step", "qsattn-local", "chunked", "never"),
        ("step", "qsattn-local", "chunked", "always"), ("sampler", "cut", "-", None),
        ("sampler", "qsattn-local", "chunked", None)]
    for r in lines:
        for key in ("method", "size", "device", "dtype", "impl", "sec_per_step", "images_per_s", "peak_mem_bytes"):
            assert key in r, key
        assert r["sec_per_step"] > 0 and r["peak_mem_bytes"] > r["base_mem_bytes"] > 0
    saved = json.loads(out.read_text())
    assert len(saved) == 6 and all("ratio_to_cut" in r and "mem_ratio_to_cut" in r for r in saved)
    # each key_reuse value against CUT with the same value
    assert saved[0]["ratio_to_cut"] == 1.0 and saved[1]["ratio_to_cut"] == 1.0
    assert saved[3]["ratio_to_cut"] == saved[3]["sec_per_step"] / saved[1]["sec_per_step"]
    assert "overhead_pct_of_cut_step" in saved[5]
    assert "| step | qsattn-local | chunked | always | 32 |" in proc.stderr


def test_bench_repeats_interleaved_with_the_median_and_profiles_the_local_step(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--tables", "step", "--methods", "cut,qsattn-local",
                           "--sizes", "32", "--steps", "1", "--warmup", "0", "--ngf", "8", "--device", "cpu",
                           "--impl", "naive", "--key-reuse", "always", "--repeat", "3", "--profile", "--top", "4",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    # interleaved: every case once, then every case again
    order = [(r["table"], r["method"]) for r in lines]
    assert order == [("step", "cut"), ("step", "qsattn-local"), ("profile", "qsattn-local")] * 3
    assert [r["repeat"] for r in lines] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    saved = json.loads(out.read_text())
    for row in saved:
        mine = [r["sec_per_step"] for r in lines if (r["table"], r["method"]) == (row["table"], row["method"])]
        assert row["sec_samples"] == mine and row["sec_per_step"] == statistics.median(mine)
    prof = saved[2]
    assert prof["table"] == "profile" and len(prof["top_ops"]) == 4
    times = [o["ms_per_step"] for o in prof["top_ops"]]
    # op names only: which kernels lead (aten:: or a oneDNN/MKL op) depends on the CPU's ISA
    assert times == sorted(times, reverse=True) and all(isinstance(o["op"], str) and o["op"] for o in prof["top_ops"])
    assert "profile: qsattn-local 32 px, impl naive, key_reuse always" in proc.stderr


def test_bench_rejects_an_unknown_key_reuse(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--key-reuse", "sometimes", "--device", "cpu",
                           "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "--key-reuse: unknown ['sometimes']" in proc.stderr


def test_bench_imports_with_torch_alone():
    code = ("import sys, qsattn.engine.bench, baselines.model, qsattn.qs_chunked, qsattn.engine.train, qsattn.data.unaligned, qsattn.data.synthetic; "
            "bad = {'mlflow', 'cleanfid', 'submitit', 'pandas'} & set(sys.modules); assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_bench_flush_denormal_rows_compare_with_cut_under_the_same_setting(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--tables", "step", "--methods", "cut,qsattn-local",
                           "--sizes", "32", "--steps", "1", "--warmup", "0", "--ngf", "8", "--device", "cpu",
                           "--impl", "chunked", "--key-reuse", "always", "--flush-denormal", "off,on", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    saved = json.loads(out.read_text())
    assert [(r["method"], r["flush_denormal"]) for r in saved] == [
        ("cut", False), ("cut", True), ("qsattn-local", False), ("qsattn-local", True)]
    assert saved[3]["ratio_to_cut"] == saved[3]["sec_per_step"] / saved[1]["sec_per_step"]
    assert saved[2]["ratio_to_cut"] == saved[2]["sec_per_step"] / saved[0]["sec_per_step"]
    assert "| step | qsattn-local | chunked | always +flush | 32 |" in proc.stderr
    bad = subprocess.run([sys.executable, "-m", "qsattn", "bench", "--flush-denormal", "maybe", "--device", "cpu",
                          "--out", str(tmp_path / "x.json")], capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--flush-denormal: unknown ['maybe']" in bad.stderr
