"""Bad input, as a user gives it: each case gets one `error:` line naming the problem and the fix, exits
non-zero, shows no traceback, and loses nothing already saved (README's "Bad input" table lists them all).

Most cases run an experiment's `main` in this process, exactly as `python -m experiments.X` would after parsing
its flags (the checks come before any data is read, so these are quick); the full disk runs as a subprocess
under a file-size limit.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import re
import resource
import signal
import socket
import subprocess

import pytest
from absl import flags
from helpers import ROOT, SHARED_DATA, experiment

from cnn_jax import cli, run
from cnn_jax.run import command as run_command
from cnn_jax.run import workdir as workdir_lib
from cnn_jax.workdir_files import SETTINGS_FILE
from experiments import mnist

pytestmark = pytest.mark.filterwarnings("ignore")


def main_error(module: str, *argv: str) -> str:
    """The SystemExit message of `python -m experiments.<module> ARGV`, run in this process."""
    experiment_module = importlib.import_module(f"experiments.{module}")
    recipe = experiment_module.recipe()
    values = flags.FlagValues()
    cli.define_flags(recipe, flag_values=values)
    values(["prog", *argv])
    hook = __import__("threading").excepthook
    try:
        with pytest.raises(SystemExit) as stop:
            run_command.execute(["prog"], recipe, train_experiment=getattr(experiment_module, "train_experiment", None),
                            flag_values=values)
    finally:
        __import__("threading").excepthook = hook
    message = str(stop.value.code)
    assert stop.value.code not in (0, None) and message.startswith("error: "), message
    assert "\n" not in message and "Traceback" not in message, message
    return message


def recorded(workdir, **changes) -> bytes:
    """A workdir whose first start had mnist's recipe (with `changes`): its flags.json's bytes."""
    from cnn_jax import settings

    config = settings.replace(mnist.recipe(), workdir=str(workdir), **changes)
    with run.claim(config, str(workdir)) as record:
        workdir_lib.write_settings(str(workdir), record)
    return (workdir / SETTINGS_FILE).read_bytes()


NO_DATA = "--data_dir=/nonexistent"  # any case that read data would fail differently


def test_a_rerun_with_other_settings_is_refused_listing_each_difference(tmp_path):
    before = recorded(tmp_path)
    message = main_error("mnist", f"--workdir={tmp_path}", "--learning_rate=0.5", "--epochs=4", NO_DATA)
    assert "holds a run started with other settings (epochs: 3 then, 4 now; learning_rate: 0.005 then, 0.5 now)" \
        in message and "use a new --workdir" in message
    assert (tmp_path / SETTINGS_FILE).read_bytes() == before


def test_another_dataset_folder_with_the_same_classes_is_a_changed_setting(tmp_path):
    recorded(tmp_path, dataset="/data/photos_2025")
    message = main_error("mnist", f"--workdir={tmp_path}", "--dataset=/data/photos_2026", NO_DATA)
    assert "dataset: '/data/photos_2025' then, '/data/photos_2026' now" in message


def test_more_epochs_for_a_finished_run_need_extend_epochs_and_fewer_are_refused(tmp_path):
    recorded(tmp_path)
    assert "add --extend_epochs" in main_error("mnist", f"--workdir={tmp_path}", "--epochs=4", NO_DATA)
    assert "epochs: 3 then, 1 now" in main_error("mnist", f"--workdir={tmp_path}", "--epochs=1", "--extend_epochs",
                                                 NO_DATA)


@pytest.mark.parametrize("content,said", [
    (b'{"epochs": 2,', "is not valid JSON (Expecting property name enclosed in double quotes: line 1 column 14 "
                       "(char 13))"),
    (b"[]", "holds [] instead of the run's settings (a JSON object)"),
    (b"null", "holds null instead of the run's settings (a JSON object)"),
    (b"7", "holds 7 instead of the run's settings (a JSON object)"),
], ids=["invalid JSON", "list", "null", "number"])
def test_a_damaged_settings_record_is_named(tmp_path, content, said):
    (tmp_path / SETTINGS_FILE).write_bytes(content)
    assert main_error("mnist", f"--workdir={tmp_path}", NO_DATA) == (
        f"error: {tmp_path / SETTINGS_FILE} {said}: the run's record of its settings is damaged: restore the file "
        "from a copy, or use another --workdir (nothing in this one was changed)")
    assert (tmp_path / SETTINGS_FILE).read_bytes() == content  # a null is not overwritten as if the workdir were new


def test_a_workdir_in_use_names_the_process_holding_it(tmp_path):
    with run.locked(str(tmp_path)):  # a kernel lock this process holds, as another run would
        message = main_error("mnist", f"--workdir={tmp_path}", NO_DATA)
    assert re.fullmatch(rf"error: workdir {re.escape(str(tmp_path))} is in use by process {os.getpid()} on host "
                        rf"{re.escape(socket.gethostname())} \(since [0-9T:+-]+\): wait for it to finish, stop it, or "
                        "use another --workdir", message), message
    assert not (tmp_path / SETTINGS_FILE).exists()


def test_a_lock_from_another_host_says_how_to_clear_it(tmp_path):
    (tmp_path / ".lock").write_text(json.dumps({"host": "gpu-node-7", "pid": 4242, "since": "then"}))
    assert main_error("mnist", f"--workdir={tmp_path}", NO_DATA) == (
        f"error: workdir {tmp_path} is locked by process 4242 on host gpu-node-7 (since then), which this host cannot "
        f"see. If that run is over, delete {tmp_path / '.lock'} and rerun; otherwise wait for it or use another "
        "--workdir")
    assert json.loads((tmp_path / ".lock").read_text())["host"] == "gpu-node-7"


def test_a_symlink_planted_in_the_workdir_is_refused_before_anything_is_written(tmp_path):
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "export").symlink_to(tmp_path / "elsewhere")
    assert main_error("mnist", f"--workdir={tmp_path / 'w'}", NO_DATA) == (
        f"error: '{tmp_path / 'w' / 'export'}' is a symbolic link (to '{tmp_path / 'elsewhere'}'), and a run writes "
        "only real files and directories inside its workdir: replace the link by a copy of what it points to, or "
        "delete it and rerun; to keep a run on another disk, make --workdir itself the link")
    assert os.listdir(tmp_path / "w") == ["export"] and os.listdir(tmp_path / "elsewhere") == []


def test_a_workdir_that_is_a_file_or_cannot_be_created(tmp_path):
    (tmp_path / "file").write_text("not a directory")
    assert "--workdir is a file" in main_error("mnist", f"--workdir={tmp_path / 'file'}", NO_DATA)
    assert "/proc/cnn_jax_run" in main_error("mnist", "--workdir=/proc/cnn_jax_run", NO_DATA)


@pytest.mark.parametrize("argv,expected", [
    (["--model=resnet_9000"], "unknown model 'resnet_9000'; choose one of: "),
    (["--learning_rate=-1"], "TrainConfig.learning_rate=-1.0 is invalid: use a positive learning rate"),
    (["--epochs=0"], "TrainConfig.epochs=0 is invalid: use at least 1 epoch"),
    (["--warmup_epochs=3"], "TrainConfig.warmup_epochs=3.0 is invalid: use a value in [0, epochs=3)"),
    (["--label_smoothing=1.5"], "TrainConfig.label_smoothing=1.5 is invalid"),
    (["--batch_size=0"], "DataConfig.batch_size must be a positive integer, got 0"),
    (["--image_size=100000"], "DataConfig.image_size=(100000, 100000) is too large: one batch of 64 such images "
                               "takes 7,153 GiB as float32; use at most 4096 pixels a side (ImageNet models take 224)"),
    (["--augment=rotate"], "unknown augmentation(s) ['rotate']; valid names are ('crop', 'flip', 'cutout', "
                           "'random_resized_crop', 'randaugment', 'trivialaugment')"),
    (["--validation_fraction=1"], "validation_fraction must be in [0, 1)"),
], ids=lambda v: v[0] if isinstance(v, list) else None)
def test_invalid_settings_are_refused_before_any_data_is_read(tmp_path, argv, expected):
    assert expected in main_error("mnist", f"--workdir={tmp_path}", NO_DATA, *argv)


def test_transfer_settings_that_contradict_each_other_or_name_no_backbone(tmp_path):
    assert "--unfreeze=2 with --mode=feature_extract" in main_error(
        "transfer", f"--workdir={tmp_path}", "--unfreeze=2", NO_DATA)
    assert "resnet_9000" in main_error("transfer", f"--workdir={tmp_path}", "--backbone=resnet_9000", NO_DATA)


def test_an_unknown_dataset_name_and_a_missing_folder(tmp_path):
    assert "'not_a_dataset' is not a tensorflow-datasets name" in main_error(
        "mnist", f"--workdir={tmp_path}", "--dataset=not_a_dataset")
    assert "does not exist" in main_error("mnist", f"--workdir={tmp_path}", f"--dataset={tmp_path}/no_photos",
                                          "--image_size=32")


def test_no_readable_checkpoint_is_an_error_and_the_checkpoints_are_kept_aside(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("needs the offline MNIST")
    broken = tmp_path / "checkpoints" / "8"
    broken.mkdir(parents=True)
    (broken / "garbage").write_bytes(b"\x00not orbax")
    message = main_error("mnist", f"--workdir={tmp_path}", f"--data_dir={SHARED_DATA}", "--num_train_examples=64",
                         "--compilation_cache_dir=")
    assert "no readable checkpoint in" in message and "unreadable-<step>" in message
    assert (tmp_path / "checkpoints" / "unreadable-8" / "garbage").exists()


def test_a_grayscale_dataset_on_a_pretrained_backbone_is_refused_with_the_channel_rule(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("needs the offline MNIST")
    message = main_error("transfer", f"--workdir={tmp_path}", "--dataset=mnist", f"--data_dir={SHARED_DATA}",
                         "--from_scratch", "--image_size=32", "--num_train_examples=64")
    assert "pretrained backbones take RGB images, but mnist has 1 channel(s)" in message
    assert not (tmp_path / SETTINGS_FILE).exists()


def test_a_diverging_run_stops_with_the_causes_and_keeps_its_checkpoints(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("needs the offline MNIST")
    # The warmup starts the rate at 0, so the first steps stay finite and are checkpointed; then it explodes.
    message = main_error("mnist", f"--workdir={tmp_path}", f"--data_dir={SHARED_DATA}", "--num_train_examples=128",
                         "--batch_size=16", "--optimizer=sgd", "--schedule=warmup_cosine", "--warmup_epochs=1",
                         "--learning_rate=1e12", "--log_every_steps=1", "--checkpoint_every_steps=1",
                         "--compilation_cache_dir=", "--tensorboard=false")
    found = re.search(r"NaN/Inf at step (\d+) .*learning rate too high.* The last good checkpoint is step (\d+) in "
                      r"(\S+)\.$", message)
    assert found, message
    bad, good = int(found[1]), int(found[2])
    assert 0 < good < bad and found[3] == str(tmp_path / "checkpoints")
    kept = sorted(int(name) for name in os.listdir(tmp_path / "checkpoints") if name.isdigit())
    assert kept[-1] == good  # the last good checkpoint is on disk, and none from the bad step or after it
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert good in logged and max(logged) < bad  # its metrics were written before it; nothing of the bad step
    assert not (tmp_path / "results.json").exists()


@pytest.mark.slow  # long end-to-end run; `python -m pytest -m slow`
def test_a_full_disk_is_one_error_line_and_the_rerun_resumes_when_there_is_room(tmp_path):
    if not os.path.isdir(os.path.join(SHARED_DATA, "mnist")):
        pytest.skip("needs the offline MNIST")

    def small_file_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    command = experiment("mnist", f"--workdir={tmp_path}", f"--data_dir={SHARED_DATA}", "--epochs=1",
                         "--num_train_examples=256", "--compilation_cache_dir=", "--tensorboard=false",
                         "--progress_bar=false")
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    full = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                          preexec_fn=small_file_limit)
    assert full.returncode == 1, full.stderr[-3000:]
    # Orbax's background asyncio threads may print "Event loop is closed" tracebacks of their own as the write
    # fails (not routed through logging or threading.excepthook); none may come from this project's code.
    assert "/cnn_jax/" not in full.stderr and "/experiments/" not in full.stderr, full.stderr[-3000:]
    errors = [line for line in full.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "could not write a checkpoint" in errors[0] and "free disk space" in errors[0]
    assert json.loads((tmp_path / SETTINGS_FILE).read_text())["epochs"] == 1  # the record survived
    room = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert room.returncode == 0, room.stderr[-3000:]
    assert (tmp_path / "results.json").exists() and (tmp_path / "export" / "meta.json").exists()


def test_a_figure_that_fails_is_logged_and_skipped_after_results_and_export(tmp_path, monkeypatch, caplog):
    import numpy as np

    from cnn_jax import plots
    from cnn_jax.train import Outcome

    class Info:
        class_names = ("price_$x^$", "b")
        num_classes = 2

    class Dataset:
        info = Info()

        def eval_batches(self, split):
            yield {"image": np.zeros((4, 8, 8, 3), np.float32), "mask": np.ones(4, np.float32)}

    test = {"labels": np.array([0, 1, 1, 0]), "predictions": np.array([0, 1, 0, 0])}
    history = [{"kind": "train", "step": 1, "epoch": 0.5, "train_loss": 1.0, "train_accuracy": 0.5,
                "learning_rate": 0.1},
               {"kind": "eval", "step": 2, "epoch": 1, "test_accuracy": 0.75, "test_loss": 0.5}]
    outcome = Outcome(state=None, history=history, test=test, results={})

    def broken(*args, **kwargs):
        raise RuntimeError("no display")

    monkeypatch.setattr(plots, "plot_per_class_accuracy", broken)
    with caplog.at_level(logging.WARNING, logger="cnn_jax.run.report"):
        run.write_figures(str(tmp_path), outcome, Dataset())
    assert "figure per_class_accuracy.png skipped: RuntimeError: no display" in caplog.text
    # The class name with TeX-like "$...^$" draws as plain text instead of failing the confusion matrix.
    assert sorted(os.listdir(tmp_path)) == ["confusion_matrix.png", "predictions.png", "training_curves.png"]


# --- image folders ------------------------------------------------------------------------------------------

def _folder(root, images_per_class=3, classes=("cat", "dog"), size=(12, 10)):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in classes:
        os.makedirs(os.path.join(root, name), exist_ok=True)
        for i in range(images_per_class):
            Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(os.path.join(root, name, f"{i}.png"))
    return root


def test_a_relative_folder_path_is_read_as_a_folder_not_a_tfds_name(tmp_path, monkeypatch):
    from cnn_jax import data

    _folder(tmp_path / "photos" / "pets", images_per_class=5)
    monkeypatch.chdir(tmp_path)
    dataset = data.load(data.DataConfig("photos/pets", image_size=(8, 8), batch_size=2))
    assert dataset.info.class_names == ("cat", "dog")
    assert "does not exist" in main_error("mnist", f"--workdir={tmp_path / 'w'}", "--dataset=photos/birds",
                                          "--image_size=8")


def test_a_folder_of_two_images_leaves_no_test_example_and_says_so(tmp_path):
    _folder(tmp_path / "tiny", images_per_class=1)
    message = main_error("mnist", f"--workdir={tmp_path / 'w'}", f"--dataset={tmp_path / 'tiny'}", "--image_size=8",
                         "--batch_size=1", "--model=simple_cnn")
    assert "leaves no test example" in message and "give it at least" in message


def test_sixteen_bit_pngs_read_as_their_eight_bit_pixels(tmp_path):
    import numpy as np
    from PIL import Image

    from cnn_jax import data

    deep = (np.arange(16 * 16).reshape(16, 16) * 255).astype(np.uint16)  # 16-bit gray, full range
    Image.fromarray(deep).save(tmp_path / "deep.png")
    image = data.read_image(str(tmp_path / "deep.png"), (16, 16), channels=1)
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[..., 0], (deep >> 8).astype(np.uint8))


def test_a_decompression_bomb_is_skipped_and_counted_without_being_decoded(tmp_path, caplog):
    import numpy as np
    from PIL import Image

    from cnn_jax import data
    from cnn_jax.data import image_folder

    root = _folder(tmp_path / "pets", images_per_class=5)
    Image.fromarray(np.zeros((9000, 8000), np.uint8)).save(root / "cat" / "bomb.png")  # 72 MPixel of zeros
    assert (root / "cat" / "bomb.png").stat().st_size < 200_000
    with caplog.at_level(logging.WARNING):
        folder = image_folder.read_image_folder(str(root), (8, 8))
    assert len(folder.labels) == 10 and [os.path.basename(p) for p in folder.skipped] == ["bomb.png"]
    with pytest.raises(data.UnreadableImageError, match="claims 8000x9000 pixels, over the"):
        data.read_image(str(root / "cat" / "bomb.png"), (8, 8))


def test_file_names_that_are_not_utf8_are_read_and_such_class_names_refused(tmp_path):
    import numpy as np
    from PIL import Image

    from cnn_jax.data import image_folder

    root = _folder(tmp_path / "pets", images_per_class=4)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(os.fsencode(root / "cat") + b"/caf\xe9.png")  # latin-1 name
    assert len(image_folder.read_image_folder(str(root), (8, 8)).labels) == 9
    os.makedirs(os.fsencode(root) + b"/b\xe9b\xe9")
    with pytest.raises(ValueError, match=r"class folder b'b.xe9b.xe9' in .* is not valid UTF-8.*rename the folder"):
        image_folder.read_image_folder(str(root), (8, 8))
