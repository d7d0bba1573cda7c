"""Tests of ``benchmarks/benchmark.py``: a smoke run of the command as users type it (simple_cnn at batch 8, a couple of
steps, every installed framework but torch_compile, whose compiles take a minute) checked for the issue's JSON
schema, sane values, the table's ratios and the figure beside them; the figure's ratios and its drawing from records
files; the mirrored resnet20s' parameter counts; the plan over frameworks and
dtypes, and the skipping of frameworks that are not installed; one bfloat16 step of cnn_jax and of PyTorch's
autocast, and (slow) one of torch.compile; and clear errors for bad flags. The speeds themselves are not asserted:
they depend on the machine and on what else runs on it.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys

import pytest
from helpers import ROOT

BENCHMARKS = os.path.join(ROOT, "benchmarks")
sys.path.insert(0, BENCHMARKS)

from bench_lib import RecordSpec, plan  # noqa: E402

KEYS = {"framework", "model", "mode", "dtype", "batch_size", "images_per_sec", "compile_s", "peak_mem_mb",
        "flops_fraction"}
SMOKE_FRAMEWORKS = ("cnn_jax", "torch", "keras")
SMOKE = ["--models=simple_cnn", f"--frameworks={','.join(SMOKE_FRAMEWORKS)}", "--batch_size=8", "--steps=2",
         "--warmup_steps=1", "--min_seconds=0", "--timeout_s=150"]
# simple_cnn's multiply-adds per 28x28 image: conv1 26*26*32*9, conv2 11*11*64*32*9, dense 1600*10 (VALID convs,
# so XLA's count, which leaves out padding, has nothing to leave out).
SIMPLE_CNN_MACS = 26 * 26 * 32 * 9 + 11 * 11 * 64 * 32 * 9 + 1600 * 10


def run_benchmark(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(BENCHMARKS, "benchmark.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """(completed process, records, metadata) of one smoke run over every installed framework."""
    out = tmp_path_factory.mktemp("benchmark") / "benchmark.json"
    result = run_benchmark(*SMOKE, f"--out={out}")
    assert result.returncode == 0, result.stderr[-4000:]
    assert out.with_name("benchmark.png").stat().st_size > 10_000  # the figure, drawn beside the records
    return result, json.loads(out.read_text()), json.loads(out.with_name("benchmark.meta.json").read_text())


@pytest.mark.slow  # runs benchmarks/benchmark.py end to end (33 s); `python -m pytest -m slow`
def test_records_follow_the_issue_schema(smoke):
    _, records, _ = smoke
    installed, _ = plan.plan(["simple_cnn"], SMOKE_FRAMEWORKS, plan.MODES)
    assert [(r["framework"], r["model"], r["mode"], r["dtype"]) for r in records] == installed
    assert ("cnn_jax", "simple_cnn", "train", "float32") in installed
    for record in records:
        assert set(record) == KEYS
        assert record["batch_size"] == 8 and isinstance(record["batch_size"], int)


@pytest.mark.slow  # runs benchmarks/benchmark.py end to end (33 s); `python -m pytest -m slow`
def test_values_are_positive_and_sane(smoke):
    _, records, meta = smoke
    for record in records:
        name = f"{record['framework']} {record['mode']}"
        assert math.isfinite(record["images_per_sec"]) and record["images_per_sec"] > 0, name
        assert 0 < record["compile_s"] < 150, name
        assert 50 < record["peak_mem_mb"] < 16_000, name  # a framework's imports alone take tens of MB
        # simple_cnn at batch 8 is far from the matmul peak, however loaded the machine.
        assert 0 < record["flops_fraction"] < 1, name
    assert meta["matmul_gflops"] > 0.1


@pytest.mark.slow  # runs benchmarks/benchmark.py end to end (33 s); `python -m pytest -m slow`
def test_model_flops_match_the_analytic_count(smoke):
    _, _, meta = smoke
    gflops = meta["forward_gflops_per_image"]["cnn_jax simple_cnn"]
    # 2 FLOPs per multiply-add, plus a few elementwise ops (normalize, bias, ReLU, pooling) per activation.
    assert 2 * SIMPLE_CNN_MACS <= gflops * 1e9 <= 1.05 * 2 * SIMPLE_CNN_MACS


@pytest.mark.slow  # runs benchmarks/benchmark.py end to end (33 s); `python -m pytest -m slow`
def test_table_lists_every_record_under_a_header_with_the_machine(smoke):
    result, records, meta = smoke
    assert f"{meta['matmul_gflops']:.1f} GFLOP/s" in result.stdout
    rows = {tuple(row[:5]): row for row in (line.split() for line in result.stdout.splitlines())}
    for record in records:
        row = rows[record["framework"], "simple_cnn", record["mode"], "float32", "8"]
        peers = [r["images_per_sec"] for r in records if r["mode"] == record["mode"] and r["framework"] != "cnn_jax"]
        torch_speed = next(r["images_per_sec"] for r in records if r["mode"] == record["mode"]
                           and r["framework"] == "torch")
        assert row[6:8] == [f"{record['images_per_sec'] / torch_speed:.2f}x",
                            f"{record['images_per_sec'] / max(peers):.2f}x"], row


@pytest.fixture(scope="module")
def resnet20_with_random_statistics():
    """cnn_jax's resnet20 variables, all drawn at random (He-scaled kernels; BatchNorm scales, shifts and statistics
    that at init would be 1s and 0s and hide a misplaced unit), two images, and cnn_jax's eval-mode logits."""
    import jax
    import numpy as np

    from cnn_jax import models

    model = models.get_model("resnet20", 10)
    images = np.random.default_rng(1).uniform(size=(2, 32, 32, 3)).astype(np.float32)
    shapes = jax.eval_shape(model.init, jax.random.key(0), images)  # compiles nothing
    rng = np.random.default_rng(2)

    def draw(path, leaf):
        if path[-1].key == "kernel":
            return (rng.standard_normal(leaf.shape) * np.sqrt(2 / np.prod(leaf.shape[:-1]))).astype(np.float32)
        low, high = (0.5, 1.5) if path[-1].key in ("scale", "var") else (-0.1, 0.1)
        return rng.uniform(low, high, leaf.shape).astype(np.float32)
    variables = jax.tree_util.tree_map_with_path(draw, shapes)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, images)
    return variables, images, np.asarray(logits)


def conv_bn_units(variables):
    """(HWIO kernel, BN scale, shift, mean, variance) of each ConvBN of cnn_jax's resnet20, in network order."""
    names = ["stem"] + [f"stage{s}_block{b}" for s in (1, 2, 3) for b in range(3)]
    for name in names:
        for unit in ([()] if name == "stem" else [("conv1",), ("conv2",)]):
            params, stats = variables["params"][name], variables["batch_stats"][name]
            for key in unit:
                params, stats = params[key], stats[key]
            yield (params["conv"]["kernel"], params["bn"]["scale"], params["bn"]["bias"], stats["bn"]["mean"],
                   stats["bn"]["var"])


@pytest.mark.parametrize("framework", ["torch", "keras"])
def test_reference_resnet20_mirrors_cnn_jax(framework, resnet20_with_random_statistics):
    """The hand-written torch and Keras resnet20s, given cnn_jax's weights, give cnn_jax's logits: the same layers,
    padding and option-A shortcuts. Their parameter counts are checked by `make_model` itself."""
    runner = pytest.importorskip(f"bench_lib.{framework}_runner", reason=f"{framework} is not installed")
    spec = RecordSpec(framework=framework, model="resnet20", mode="infer", batch_size=2, num_classes=10,
                      input_shape=(32, 32, 3), expected_params=269_722, mean=(0.5,), std=(0.25,), steps=1,
                      warmup_steps=0, min_seconds=0, keras_jit_compile=False)
    model = runner.make_model(spec)
    variables, images, expected = resnet20_with_random_statistics
    head = variables["params"]["head"]["logits"]
    if framework == "torch":
        torch, nn = runner.torch, runner.nn
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
        for conv, bn, (kernel, *norm) in zip(convs, bns, conv_bn_units(variables), strict=True):
            conv.weight.data = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy())
            for tensor, value in zip((bn.weight, bn.bias, bn.running_mean, bn.running_var), norm):
                tensor.data = torch.from_numpy(value)
        model.head.weight.data = torch.from_numpy(head["kernel"].T.copy())
        model.head.bias.data = torch.from_numpy(head["bias"])
        with torch.no_grad():
            logits = model.eval()(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    else:
        layers = runner.layers
        convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
        bns = [layer for layer in model.layers if isinstance(layer, layers.BatchNormalization)]
        for conv, bn, (kernel, *norm) in zip(convs, bns, conv_bn_units(variables), strict=True):
            conv.set_weights([kernel])
            bn.set_weights(norm)
        model.get_layer(index=-1).set_weights([head["kernel"], head["bias"]])
        logits = runner.np.asarray(model(images, training=False))
    assert abs(logits - expected).max() <= 1e-4 * abs(expected).max()
    with pytest.raises(AssertionError, match="architectures differ"):
        runner.make_model(RecordSpec(**{**spec.__dict__, "expected_params": 269_721}))


def test_a_missing_package_skips_its_records_with_a_note():
    records, notes = plan.plan(["simple_cnn", "resnet50"], plan.FRAMEWORKS, ["train"],
                               installed=lambda package: package != "torchvision")
    assert ("torch", "simple_cnn", "train", "float32") in records
    assert not [r for r in records if r[0].startswith("torch") and r[1] == "resnet50"]
    assert notes == ["skipped torch resnet50: torchvision not installed",
                     "skipped torch_compile resnet50: torchvision not installed"]
    records, notes = plan.plan(["simple_cnn"], plan.FRAMEWORKS, plan.MODES,
                               installed=lambda package: package != "tensorflow")
    assert {framework for framework, *_ in records} == {"cnn_jax", "torch", "torch_compile"}
    assert notes == ["skipped keras simple_cnn: tensorflow not installed"]


def test_plan_runs_every_dtype_of_each_framework_together():
    records, _ = plan.plan(["simple_cnn", "resnet20"], ["cnn_jax", "torch_compile"], plan.MODES,
                           installed=lambda package: True, dtypes=plan.DTYPES)
    assert len(records) == len(set(records)) == 2 * 2 * 2 * 2
    assert records[:4] == [("cnn_jax", "simple_cnn", mode, dtype) for dtype in plan.DTYPES for mode in plan.MODES]
    assert [r[1] for r in records] == ["simple_cnn"] * 8 + ["resnet20"] * 8


def bfloat16_spec(framework: str) -> RecordSpec:
    return RecordSpec(framework=framework, model="simple_cnn", mode="train", batch_size=4, num_classes=10,
                      input_shape=(28, 28, 1), expected_params=34_826, mean=(0.1307,), std=(0.3081,), steps=1,
                      warmup_steps=0, min_seconds=0, keras_jit_compile=False, dtype="bfloat16")


def test_cnn_jax_bfloat16_record_computes_in_bfloat16_with_float32_params():
    import jax
    import jax.numpy as jnp
    from bench_lib import jax_runner, worker

    spec = bfloat16_spec("cnn_jax")
    model = jax_runner.make_model(spec)
    x = jnp.zeros((1, *spec.input_shape))
    variables = model.init(jax.random.key(0), x)
    _, maps = model.apply(variables, x, mutable=["intermediates"])
    assert maps["intermediates"]["features"][0].dtype == jnp.bfloat16  # the feature maps; logits come out float32
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    assert worker.measure(jax_runner.build(spec), spec)["images_per_sec"] > 0


def test_cnn_jax_record_releases_the_compilers_freed_heap_from_its_first_compile(monkeypatch):
    """cnn_jax's cold peak memory is measured as training runs: ``freed_memory.release_after_compiles`` is
    installed before the train state's initialization compiles."""
    from bench_lib import jax_runner

    from cnn_jax import freed_memory

    calls = []
    monkeypatch.setattr(freed_memory, "release_after_compiles", lambda: calls.append("install"))
    monkeypatch.setattr(jax_runner, "create_train_state", lambda *args: calls.append("train state"))
    jax_runner.build(bfloat16_spec("cnn_jax"))
    assert calls == ["install", "train state"]


def test_torch_bfloat16_record_runs_convolutions_under_autocast_and_keeps_float32_params():
    torch_runner = pytest.importorskip("bench_lib.torch_runner", reason="torch is not installed")
    from bench_lib import worker

    spec = bfloat16_spec("torch")
    seen = []
    original = torch_runner.make_model

    def watched(spec):
        model = original(spec)
        model.conv1.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
        watched.model = model
        return model
    torch_runner.make_model = watched
    try:
        measured = worker.measure(torch_runner.build(spec), spec)
    finally:
        torch_runner.make_model = original
    assert measured["images_per_sec"] > 0
    assert seen and set(seen) == {torch_runner.torch.bfloat16}
    assert {p.dtype for p in watched.model.parameters()} == {torch_runner.torch.float32}


@pytest.mark.slow
def test_torch_compile_record_compiles_the_model_it_times():
    """One torch.compile training step (20-40 s of inductor compiling on the 2-core CPU) moves the parameters where
    eager training's first step moves them (dropout off: the two draw different masks)."""
    torch_runner = pytest.importorskip("bench_lib.torch_runner", reason="torch is not installed")
    torch = torch_runner.torch
    spec = RecordSpec(**{**bfloat16_spec("torch_compile").__dict__, "dtype": "float32"})
    built, original = [], torch_runner.make_model

    def without_dropout(spec):
        built.append(original(spec))
        built[-1].dropout.p = 0.0
        return built[-1]
    torch_runner.make_model = without_dropout
    try:
        compiled = torch_runner.build(spec)
        initial = [p.detach().clone() for p in built[0].parameters()]
        compiled.step()
        torch_runner.build(RecordSpec(**{**spec.__dict__, "framework": "torch"})).step()
    finally:
        torch_runner.make_model = original
    after_compiled, after_eager = list(built[0].parameters()), list(built[1].parameters())
    assert any(not torch.equal(p, q) for p, q in zip(after_compiled, initial))
    for p, q in zip(after_compiled, after_eager, strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("flag, named", [("--models=resnet21", "resnet21"), ("--frameworks=mxnet", "mxnet"),
                                         ("--batch_size=0", "batch_size"), ("--dtype=float16", "float16")])
def test_bad_flags_are_named_with_the_fix(flag, named):
    result = run_benchmark(flag, "--out=/dev/null")
    assert result.returncode != 0
    assert named in result.stderr and ("choose from" in result.stderr or "at least" in result.stderr)


def test_a_failed_record_is_reported_and_the_command_fails(tmp_path):
    pytest.importorskip("keras", reason="keras is not installed")  # its import alone outlasts the 1 s limit
    out = tmp_path / "benchmark.json"
    result = run_benchmark("--models=simple_cnn", "--frameworks=keras", "--modes=infer", "--timeout_s=1",
                           f"--out={out}")
    assert result.returncode == 1
    assert json.loads(out.read_text()) == []
    notes = json.loads(out.with_name("benchmark.meta.json").read_text())["notes"]
    assert notes == ["failed keras simple_cnn infer float32: ran past --timeout_s=1"]
    assert "note: failed keras simple_cnn infer float32" in result.stdout


def test_the_huge_page_tunable_goes_to_the_frameworks_the_flag_names_and_no_others(monkeypatch):
    import benchmark

    from cnn_jax import huge_pages
    # This process's own setting, on or off, gives way to the flag.
    for own in (huge_pages.TUNABLE, "glibc.malloc.hugetlb=0"):
        monkeypatch.setenv("GLIBC_TUNABLES", f"glibc.malloc.arena_max=2:{own}")
        for framework, huge_pages_for in [("torch", "cnn_jax"), ("cnn_jax", "none")]:
            plain = benchmark.record_environment(framework, huge_pages_for)
            assert plain["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2"
    given = huge_pages.environment({}) is not None  # glibc 2.35+ with transparent huge pages
    for framework, huge_pages_for in [("torch", "all"), ("cnn_jax", "cnn_jax")]:
        tunables = benchmark.record_environment(framework, huge_pages_for)["GLIBC_TUNABLES"]
        assert tunables == (f"glibc.malloc.arena_max=2:{huge_pages.TUNABLE}" if given else "glibc.malloc.arena_max=2")


def test_a_warm_record_reads_the_compilations_a_first_process_cached(tmp_path):
    # `--compilation_cache=warm` runs each record twice with one cache directory: the first child must leave its
    # compiled programs there, and the second must find every one of them (JAX writes an entry only on a miss:
    # no entry is added or rewritten).
    cache = tmp_path / "cache"
    spec = RecordSpec(**{**bfloat16_spec("cnn_jax").__dict__, "dtype": "float32", "compilation_cache_dir": str(cache)})
    command = [sys.executable, "-m", "bench_lib.worker", json.dumps(spec.__dict__)]
    entries = []
    for _ in range(2):
        child = subprocess.run(command, cwd=BENCHMARKS, capture_output=True, text=True, timeout=300)
        assert child.returncode == 0, child.stderr[-2000:]
        entries.append({path.name: path.stat().st_mtime_ns for path in cache.iterdir()})
    assert entries[0] and entries[1] == entries[0]


def speed(framework, images_per_sec, model="simple_cnn", mode="train", batch_size=128, dtype="float32"):
    return {"framework": framework, "model": model, "mode": mode, "dtype": dtype, "batch_size": batch_size,
            "images_per_sec": images_per_sec}


def test_ratios_are_relative_to_the_fastest_peer_of_the_same_model_mode_batch_and_dtype():
    from bench_lib import figure

    records = [speed("cnn_jax", 150.0), speed("torch", 100.0), speed("keras", 120.0),
               speed("cnn_jax", 50.0, batch_size=1), speed("torch_compile", 100.0, batch_size=1),
               speed("cnn_jax", 300.0, dtype="bfloat16"), speed("torch", 200.0, dtype="bfloat16"),
               speed("cnn_jax", 10.0, model="resnet20")]  # no peer: left out
    ratios = figure.relative_to_fastest_peer(records)
    assert ratios == {("simple_cnn", "train", 128, "float32"): {"cnn_jax": 1.25, "torch": 100 / 120, "keras": 1.0},
                      ("simple_cnn", "train", 1, "float32"): {"cnn_jax": 0.5, "torch_compile": 1.0},
                      ("simple_cnn", "train", 128, "bfloat16"): {"cnn_jax": 1.5, "torch": 1.0}}


def test_plot_draws_the_figure_of_several_records_files_at_its_size(tmp_path):
    from bench_lib import figure
    from PIL import Image

    train = [speed(f, s, model=m) for m in ("simple_cnn", "resnet20", "resnet50") for f, s in
             (("cnn_jax", 90.0), ("torch", 100.0), ("keras", 80.0))]
    infer = [speed(f, s, mode="infer", batch_size=16) for f, s in (("cnn_jax", 300.0), ("torch_compile", 200.0))]
    (tmp_path / "train.json").write_text(json.dumps(train))
    (tmp_path / "train.meta.json").write_text(json.dumps({"date": "2026-12-07T08:00:00+00:00",
                                                          "machine": {"cpu": "Test CPU", "cpu_count": 2}}))
    (tmp_path / "infer.json").write_text(json.dumps(infer))  # no metadata beside it: drawn all the same
    png = tmp_path / "figure" / "benchmark.png"
    result = run_benchmark(f"--plot={tmp_path / 'train.json'},{tmp_path / 'infer.json'}", f"--figure={png}")
    assert result.returncode == 0, result.stderr[-2000:]
    rows = 2  # three models, two panels to a row
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (round(figure.WIDTH_IN * figure.DPI),
                              round((figure.ROW_HEIGHT_IN * rows + 1) * figure.DPI))
        assert len(set(image.convert("RGB").getdata())) > 20  # bars, text and axes, not a blank canvas


def test_records_files_that_are_missing_or_foreign_are_named():
    from bench_lib import figure

    with pytest.raises(ValueError, match="cannot read benchmark records nope.json .*No such file"):
        figure.load(["nope.json"])
    with pytest.raises(ValueError, match="not a list of benchmark records"):
        figure.load([os.path.join(BENCHMARKS, "results", "2026-12-06.meta.json")])
    with pytest.raises(ValueError, match="no record has a peer"):
        figure.draw([speed("cnn_jax", 1.0)], [], "unused.png")


def test_plot_of_a_file_that_is_not_json_is_one_error_line_and_draws_nothing(tmp_path):
    path = tmp_path / "records.json"
    path.write_text("not json")
    result = run_benchmark(f"--plot={path}", f"--figure={tmp_path / 'figure.png'}")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: cannot read benchmark records {path} (Expecting value: "
                                                  "line 1 column 1 (char 0)): give the JSON files that benchmark.py "
                                                  "--out wrote"]
    assert not (tmp_path / "figure.png").exists()


def test_benchmarks_md_opens_with_the_figure_of_the_committed_records():
    with open(os.path.join(ROOT, "BENCHMARKS.md"), encoding="utf-8") as f:
        text = f.read()
    image = re.search(r"!\[[^\]]*\]\(([^)]+\.png)\)", text)
    assert image and text.index(image.group(0)) < text.index("\n## "), "the figure comes before every section"
    png = os.path.join(ROOT, image.group(1))
    assert 10_000 < os.path.getsize(png) < 150_000
    records = png[:-len(".png")] + ".json"
    assert f"figure is drawn from [{os.path.relpath(records, ROOT)}]" in " ".join(text.split())  # says its source
    from bench_lib import figure
    ratios = figure.relative_to_fastest_peer(figure.load([records])[0])
    assert {mode for _, mode, _, _ in ratios} == {"train", "infer"}
