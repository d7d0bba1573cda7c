"""experiments/concepts.py end to end, as a user runs it: its figures, and the numbers they show."""
import json
import os
import subprocess
import sys

from helpers import ROOT

FIGURES = ("dense_vs_conv_params.png", "edge_filters.png", "stride_padding.png", "pooling.png",
           "receptive_field.png", "equivariance.png")


def run_concepts(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run([sys.executable, "-m", "experiments.concepts", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_concepts_writes_its_figures_and_their_numbers(tmp_path):
    result = run_concepts(f"--workdir={tmp_path}", "--image_size=32")
    assert result.returncode == 0, result.stderr[-2000:]
    for name in FIGURES:
        assert (tmp_path / "figures" / name).stat().st_size > 5000, name
    numbers = json.loads((tmp_path / "concepts.json").read_text())

    params = numbers["params"]
    assert {size["3x3 conv to 16 maps"] for size in params.values()} == {3 * 3 * 3 * 16 + 16}
    side = 224
    assert params[str(side)]["dense to 16 maps"] == (3 * side ** 2 + 1) * 16 * side ** 2
    assert numbers["output_sizes"] == {"stride 1 VALID": 5, "stride 1 SAME": 7, "stride 2 VALID": 3,
                                       "stride 2 SAME": 4}

    fields = numbers["receptive_field"]
    depths = range(1, 11)
    assert fields["3x3 convs"] == [2 * d + 1 for d in depths]
    assert fields["3x3 dilated 2^i (WaveNet)"] == [2 ** (d + 1) - 1 for d in depths]
    assert fields["3x3 conv + 2x2 pool"][:3] == [4, 10, 22]  # conv 3, pool +1; conv +2*2, pool +2; ...

    pooled_max, pooled_mean = (numbers["pooling"][key] for key in ("max pool 2x2", "average pool 2x2"))
    assert all(m >= a for row_m, row_a in zip(pooled_max, pooled_mean) for m, a in zip(row_m, row_a))
    assert max(map(max, pooled_max)) == 30.0

    errors = numbers["equivariance_error"]
    shift = next(error for name, error in errors.items() if name.startswith("shift"))
    rotation = next(error for name, error in errors.items() if name.startswith("rotate"))
    assert shift < 1e-5 and rotation > 1.0  # conv(shift(x)) == shift(conv(x)); not so for a rotation


def test_concepts_rejects_a_too_small_image(tmp_path):
    result = run_concepts(f"--workdir={tmp_path}", "--image_size=8")
    assert result.returncode != 0 and "image_size must be at least 16" in result.stderr
