"""CUDA code paths. Skipped, with the reason shown, where no GPU is present (CI, developer machines).

Run on a GPU machine from the working tree with torch alone: `PYTHONPATH=. python -m pytest tests/test_gpu.py`.
"""
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qsattn.engine import checkpoint as ckpt_io
from qsattn.engine.config import resolve
from baselines.model import discriminator_loss, generator_loss, train_step
from qsattn.state import create_state

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here")]

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).parent / "fixtures"


def test_cut_matches_the_official_fixtures_on_cuda():
    common = torch.load(FIXTURES / "parity_common.pt", weights_only=True)
    fx = torch.load(FIXTURES / "parity_cut.pt", weights_only=True)
    cfg = resolve({"method": "cut", "ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32})
    state = create_state(cfg, "cuda")
    for name in ("G", "D", "F"):
        state.modules()[name].load_state_dict(common[name], strict=True)
    A, B = common["real_A"].cuda(), common["real_B"].cuda()
    fake = state.G(torch.cat([A, B]))
    torch.testing.assert_close(fake[:1].cpu(), common["fake_B"], rtol=1e-4, atol=1e-4)
    loss_D = discriminator_loss(state, fake[:1], B)[0]
    torch.testing.assert_close(loss_D.cpu(), common["loss_D"], rtol=1e-4, atol=1e-5)
    ids = [i.cuda() for i in fx["patch_ids"]]
    ids_idt = [i.cuda() for i in fx["patch_ids_idt"]]
    losses = generator_loss(state, A, B, fake[:1], fake[1:], patch_ids=ids, patch_ids_idt=ids_idt)
    for ours, ref in (("NCE", "loss_NCE"), ("NCE_Y", "loss_NCE_Y"), ("G", "loss_G")):
        torch.testing.assert_close(losses[ours].cpu(), fx[ref], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["qsattn-global", "qsattn-local", "qsattn-global-local"])
def test_chunked_selects_what_naive_selects_on_cuda(method):
    from qsattn.sampler import build_sampler

    cfg = resolve({"method": method, "num_patches": 256, "qs_chunk": 512})
    torch.manual_seed(0)
    feats = [torch.randn(2, 256, 32, 32, device="cuda") for _ in range(5)]
    naive, chunked = build_sampler(cfg).cuda(), build_sampler(resolve({**cfg.to_dict(), "qs_impl": "chunked"})).cuda()
    naive.build([256] * 5, "cuda")
    chunked.build([256] * 5, "cuda")
    chunked.load_state_dict(naive.state_dict(), strict=True)
    ids = [torch.arange(256, device="cuda")] * 3 + [None, None]
    out_n, ids_n, _ = naive(feats, patch_ids=ids)
    out_c, ids_c, _ = chunked(feats, patch_ids=ids)
    for layer in cfg.qs_layers:
        assert torch.equal(ids_n[layer], ids_c[layer]), f"layer {layer}"
        torch.testing.assert_close(out_c[layer], out_n[layer], rtol=1e-4, atol=1e-5)


def test_training_resumes_and_translates_on_cuda(tmp_path):
    from qsattn.data.synthetic import generate
    from qsattn.engine.train import train

    generate(tmp_path / "data" / "synthetic", size=32, n_train=6, n_test=2)
    base = {"data_root": str(tmp_path / "data"), "run_root": str(tmp_path / "runs"), "tracking_uri": "off",
            "device": "cuda", "ngf": 8, "ndf": 8, "netF_nc": 32, "num_patches": 32, "crop_size": 32,
            "load_size": 32, "sample_every": 2, "checkpoint_every": 2, "name": "r"}
    run_dir = train(resolve({**base, "max_steps": 3}), progress=False)
    (run_dir / "DONE").unlink()
    train(resolve({**base, "max_steps": 5}), progress=False)
    ckpt = ckpt_io.load(run_dir / "checkpoints" / "latest.pt")
    assert ckpt["step"] == 5 and "cuda" in ckpt["rng"]
    assert all(torch.isfinite(v).all() for v in ckpt["net_G"].values())
    out = subprocess.run([sys.executable, "-m", "qsattn", "translate", "--checkpoint", str(run_dir / "checkpoints" / "latest.pt"),
                          "--input", str(tmp_path / "data" / "synthetic" / "testA"), "--output", str(tmp_path / "out"),
                          "--device", "cuda"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "out").glob("*.png"))) == 2


def test_one_step_of_every_method_on_cuda():
    for method in ("cut", "fastcut", "qsattn-global", "qsattn-local", "qsattn-global-local"):
        torch.manual_seed(0)
        state = create_state(resolve({"method": method, "crop_size": 256}), "cuda")
        A, B = torch.rand(1, 3, 256, 256, device="cuda") * 2 - 1, torch.rand(1, 3, 256, 256, device="cuda") * 2 - 1
        losses = train_step(state, A, B)
        assert all(torch.isfinite(v) for v in losses.values()), method


# --- speed options (issue #10): the GPU half of tests/test_fast_step.py ------------------------------

SMALL = {"ngf": 16, "ndf": 16, "netF_nc": 64, "num_patches": 64, "crop_size": 64}
PLAIN = {"adam_impl": "plain", "pin_memory": False}


def _gpu_run(overrides, steps=50, deterministic=True, odd_step=None):
    import os

    from baselines.model import configure_backends

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    prev = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(deterministic)
    try:
        cfg = resolve({"method": "cut", **SMALL, "deterministic": deterministic, **overrides})
        configure_backends(cfg, "cuda")
        torch.manual_seed(0)
        state = create_state(cfg, "cuda")
        g = torch.Generator().manual_seed(1)
        data = [(torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, torch.rand(1, 3, 64, 64, generator=g) * 2 - 1) for _ in range(4)]
        odd = (torch.rand(1, 3, 48, 48, generator=g) * 2 - 1, torch.rand(1, 3, 48, 48, generator=g) * 2 - 1)
        from qsattn.engine.train import to_device

        history = []
        for i in range(steps):
            batch = to_device(odd if i == odd_step else data[i % 4], torch.device("cuda"), cfg.pin_memory)
            losses = train_step(state, *batch)
            history.append(torch.stack([losses[k] for k in sorted(losses)]))
        weights = {f"{n}.{k}": v.detach().cpu() for n, m in state.modules().items() for k, v in m.state_dict().items()}
        return torch.stack(history).cpu(), weights, state
    finally:
        torch.use_deterministic_algorithms(prev)
        torch.backends.cudnn.benchmark = False
        torch.set_float32_matmul_precision("highest")


def _diffs(a, b):
    return {"loss_step1": (a[0][0] - b[0][0]).abs().max().item(), "loss_max": (a[0] - b[0]).abs().max().item(),
            "weights_max": max((a[1][k] - b[1][k]).abs().max().item() for k in a[1])}


def _record(name, diffs):
    """Write the measured differences under $OUT (tools/gpu_check.sh) for docs/performance.md."""
    import json
    import os

    if os.environ.get("OUT"):
        path = Path(os.environ["OUT"]) / "gpu_option_diffs.jsonl"
        with open(path, "a") as fh:
            fh.write(json.dumps({"option": name, **diffs}) + "\n")


@pytest.fixture(scope="module")
def plain_gpu():
    return _gpu_run(PLAIN)


@pytest.mark.parametrize("name,overrides", [("adam_impl=foreach", {"adam_impl": "foreach"}),
                                            ("pin_memory", {"pin_memory": True})])
def test_identical_options_give_the_plain_50_steps_on_cuda(plain_gpu, name, overrides):
    """The options on by default must give the plain losses and weights after 50 steps."""
    run = _gpu_run({**PLAIN, **overrides})
    _record(name, _diffs(run, plain_gpu))
    torch.testing.assert_close(run[0], plain_gpu[0])
    for k in run[1]:
        torch.testing.assert_close(run[1][k], plain_gpu[1][k], msg=k)


@pytest.mark.parametrize("name,overrides,deterministic", [
    ("adam_impl=fused", {"adam_impl": "fused"}, True),
    ("cudnn_benchmark", {"cudnn_benchmark": True}, False),
    ("compile=default", {"compile": "default"}, True),
    ("compile=reduce-overhead", {"compile": "reduce-overhead"}, False)])
def test_rounding_options_agree_at_the_first_step_on_cuda(plain_gpu, name, overrides, deterministic):
    """Options labelled "rounding" (off by default): the first step agrees within float32 rounding;
    the 50-step differences are recorded. If one stays identical over 50 steps on the GPU, it may go
    on by default there."""
    run = _gpu_run({**PLAIN, **overrides}, deterministic=deterministic)
    compiled = run[2].compiled
    _record(name, {**_diffs(run, plain_gpu), "eager_pieces": sorted(compiled.failed) if compiled else []})
    assert torch.isfinite(run[0]).all()
    torch.testing.assert_close(run[0][0], plain_gpu[0][0], rtol=1e-3, atol=1e-4)
    if compiled is not None:
        assert not compiled.disabled, compiled.disabled


def test_cuda_graph_step_keeps_earlier_losses_and_runs_odd_shapes_eager():
    """reduce-overhead replays CUDA graphs whose outputs are overwritten by the next replay: the
    losses train_step returns must be copies. A batch of another shape runs eager, with a warning."""
    with pytest.warns(RuntimeWarning, match="differs from the compiled"):
        run = _gpu_run({"compile": "reduce-overhead"}, steps=8, deterministic=False, odd_step=6)
    first = run[0][0]
    assert torch.isfinite(run[0]).all() and not torch.equal(first, run[0][1])
    cfg = resolve({"method": "cut", **SMALL, "compile": "reduce-overhead"})
    torch.manual_seed(0)
    state = create_state(cfg, "cuda")
    A, B = torch.rand(1, 3, 64, 64, device="cuda"), torch.rand(1, 3, 64, 64, device="cuda")
    kept = [train_step(state, A, B) for _ in range(4)]
    values = [l["G"].item() for l in kept]
    assert len(set(values)) == 4, values  # each step's own loss, not the last replay's


# --- key reuse (issue #17): the GPU half of the key_reuse tests in tests/test_fast_step.py ----------------

def test_key_reuse_auto_gives_the_plain_50_steps_on_cuda():
    """key_reuse=auto against never on CUDA, 50 deterministic steps: bit for bit the same, whether the
    probe found cuDNN's batched forward exact (then CUT reuses its keys) or not (then it falls back).
    Which of the two happened is recorded (gpu_option_diffs.jsonl) for docs/performance.md."""
    never = _gpu_run({**PLAIN, "key_reuse": "never"})
    auto = _gpu_run({**PLAIN, "key_reuse": "auto"})
    _record("key_reuse=auto", {**_diffs(auto, never), "probe": [bool(v) for v in auto[2].exact_keys.values()]})
    assert torch.equal(auto[0], never[0])
    for k in never[1]:
        assert torch.equal(auto[1][k], never[1][k]), k


@pytest.mark.parametrize("method", ["cut", "qsattn-global", "qsattn-local", "qsattn-global-local"])
def test_key_reuse_always_on_cuda(method):
    """key_reuse=always: CUT bit for bit where the probe says the batched forward is exact; QS-Attn
    (gradients through the reused attention, summed in another order) agrees at the first step within
    float32 rounding. The 50-step differences are recorded."""
    never = _gpu_run({**PLAIN, "method": method, "key_reuse": "never"})
    always = _gpu_run({**PLAIN, "method": method, "key_reuse": "always"})
    probe = create_state(resolve({"method": "cut", **SMALL, "key_reuse": "auto"}), "cuda")
    from baselines.model import batched_keys_exact

    exact = batched_keys_exact(probe, torch.zeros(1, 3, 64, 64, device="cuda"))
    _record(f"key_reuse=always {method}", {**_diffs(always, never), "probe": exact})
    assert torch.isfinite(always[0]).all()
    # step 1: the same losses up to float32 rounding of the features (a few ulps, 1e-7 relative, grown
    # through the encoder's ~20 layers and the NCE softmax: 1e-4 leaves a factor of 1000 for that growth)
    torch.testing.assert_close(always[0][0], never[0][0], rtol=1e-4, atol=1e-5)
    if method == "cut" and exact:
        assert torch.equal(always[0], never[0])
