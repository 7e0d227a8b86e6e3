"""gpubp train's --augment, --max-norm, --schedule, --warmup, --dropout and --recipe; gpubp recipes;
gpubp evaluate --report: what they write, and one line + exit 2 for each bad value."""

import inspect
import json

import numpy as np
import pytest
from helpers import one_line_error, run_cli, write_mnist_like

from gpubp import Network, cli
from gpubp.errors import GpubpError
from gpubp.recipes import RECIPES


@pytest.fixture(scope="module")
def square(tmp_path_factory):
    """A tiny MNIST-format set of 4x4 images (square, so it can be distorted)."""
    return str(write_mnist_like(tmp_path_factory.mktemp("square"), n_train=10_300, shape=(4, 4)))


def train(capsys, data, *argv):
    return run_cli(capsys, "train", "--data-dir", data, "--no-verify", "--sizes", "16,8,10", "--backend", "numpy",
                   "--batch-size", "50", "--quiet", *argv)


def test_augment_max_norm_and_a_schedule_reach_the_metrics_and_the_model_file(capsys, tmp_path, square):
    m, r, r2 = tmp_path / "m.npz", tmp_path / "r.json", tmp_path / "r2.json"
    code, out, err = train(capsys, square, "--epochs", "3", "--augment", "simard-affine", "--rotate", "5",
                           "--max-norm", "2", "--schedule", "step", "--warmup", "1", "--eta", "0.4", "--save", str(m),
                           "--metrics-out", str(r))
    assert code == 0, err
    config = json.loads(r.read_text())["config"]
    assert config["augment"]["rotate"] == 5.0 and config["augment"]["shear"] == 15.0  # the flag over the preset
    assert config["max_norm"] == 2.0 and config["schedule"]["config"]["name"] == "step"
    assert [e["eta"] for e in json.loads(r.read_text())["epochs"]] == pytest.approx([0.2, 0.4, 0.4])
    code, out, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--backend", "numpy", "--resume",
                             str(m), "--epochs", "1", "--metrics-out", str(r2))
    assert code == 0, err
    resumed = json.loads(r2.read_text())
    assert resumed["config"]["augment"]["rotate"] == 5.0 and resumed["config"]["max_norm"] == 2.0
    assert "eta 0.4" in out  # the schedule's eta, shown per epoch
    code, _, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--backend", "numpy", "--resume",
                           str(m), "--epochs", "1", "--augment", "none", "--max-norm", "0", "--metrics-out", str(r2))
    assert code == 0, err
    off = json.loads(r2.read_text())["config"]
    assert off["augment"] is None and off["max_norm"] is None  # turned off for the resumed run


@pytest.mark.parametrize("argv,needle", [
    (["--schedule", "linear"], "invalid choice"),
    (["--max-norm", "-1"], "--max-norm: must be >= 0"),
    (["--warmup", "-2"], "--warmup: must be >= 0"),
    (["--dropout", "1.5"], "--dropout: must be at most 1"),
    (["--input-dropout", "x"], "--input-dropout: expected"),
    (["--rotate", "-3"], "--rotate: must be a finite number >= 0"),
    (["--augment", "wobbly"], "invalid choice"),
    (["--recipe", "lenet"], "invalid choice"),
])
def test_bad_values_are_one_line_errors(capsys, argv, needle):
    one_line_error(*run_cli(capsys, "train", *argv)[::2], needle)


def test_augmenting_images_that_are_not_square_is_one_line(capsys, tmp_path):
    data = str(write_mnist_like(tmp_path / "d", n_train=10_100, shape=(2, 5)))
    code, _, err = run_cli(capsys, "train", "--data-dir", data, "--no-verify", "--sizes", "10,4,10", "--backend",
                           "numpy", "--epochs", "1", "--quiet", "--augment", "simard-elastic")
    one_line_error(code, err, "not square images")


def test_a_cosine_schedule_past_its_end_is_one_line(capsys, tmp_path, square):
    m = tmp_path / "c.npz"
    assert train(capsys, square, "--epochs", "2", "--schedule", "cosine", "--save", str(m))[0] == 0
    code, _, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--backend", "numpy", "--resume",
                           str(m), "--epochs", "1", "--quiet")
    one_line_error(code, err, "gives eta 0 from epoch 3")


def test_dropout_flags_reach_the_network_or_say_they_cannot(capsys, tmp_path, square):
    r = tmp_path / "d.json"
    code, _, err = train(capsys, square, "--epochs", "1", "--dropout", "0.3", "--input-dropout", "0.1",
                         "--metrics-out", str(r))
    if "dropout" in inspect.signature(Network).parameters:
        assert code == 0, err
        config = json.loads(r.read_text())["config"]
        assert config.get("dropout") == 0.3 and config.get("input_dropout") == 0.1, config
    else:
        one_line_error(code, err, "--dropout and --input-dropout need")
    one_line_error(*train(capsys, square, "--epochs", "1", "--dropout", "1")[::2], "would drop every unit")


def test_a_recipe_sets_its_flags_and_every_flag_given_overrides_it(capsys, tmp_path, square):
    r = tmp_path / "n.json"
    code, _, err = run_cli(capsys, "train", "--recipe", "network2", "--data-dir", square, "--no-verify",
                           "--backend", "numpy", "--sizes", "16,20,10", "--epochs", "1", "--quiet",
                           "--metrics-out", str(r))
    assert code == 0, err
    config = json.loads(r.read_text())["config"]
    flags = RECIPES["network2"].flags
    assert config["recipe"] == "network2"
    assert (config["cost"], config["eta"], config["lmbda"], config["batch_size"]) == (
        flags["cost"], flags["eta"], flags["lmbda"], flags["batch_size"])
    assert config["sizes"] == [16, 20, 10] and config["epochs"] == 1  # given: over the recipe's
    assert flags["sizes"] != [16, 20, 10] and flags["epochs"] != 1


def test_train_on_validation_trains_on_all_the_training_images_as_the_library_would(capsys, tmp_path, square):
    from gpubp.data import load_mnist
    from helpers import assert_equal

    m, r = tmp_path / "all.npz", tmp_path / "all.json"
    code, out, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--sizes", "16,8,10", "--backend",
                             "numpy", "--batch-size", "50", "--epochs", "2", "--seed", "4", "--train-on-validation",
                             "--save", str(m), "--metrics-out", str(r))
    assert code == 0, err
    metrics = json.loads(r.read_text())
    assert metrics["config"]["train_on_validation"] is True and "validation accuracy" not in out
    assert [e["validation_accuracy"] for e in metrics["epochs"]] == [None, None]
    data = load_mnist(square, verify=False)
    both = [np.concatenate([data["train"][i], data["validation"][i]]) for i in (0, 1)]
    net = Network([16, 8, 10], backend="numpy", seed=4)
    net.sgd(tuple(both), epochs=2, mini_batch_size=50, progress=False)
    trained = Network.load(m, backend="numpy")
    assert trained.optimizer.n == len(both[1]) == 10_300
    assert_equal(trained.params, net.params, "the CLI's weights against sgd on train + validation")
    code, out, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--backend", "numpy", "--resume",
                             str(m), "--epochs", "1", "--save", str(m))
    assert code == 0 and "validation accuracy" not in out, err  # the file's choice, kept
    assert Network.load(m, backend="numpy").optimizer.n == 10_300


def test_train_on_validation_refuses_what_watches_the_validation_set(capsys, tmp_path, square):
    m = tmp_path / "fifty.npz"
    for argv, needle in ((["--early-stopping", "2"], "--early-stopping watches the validation accuracy"),
                         (["--schedule", "plateau"], "--schedule plateau watches the validation accuracy")):
        one_line_error(*train(capsys, square, "--epochs", "1", "--train-on-validation", *argv)[::2], needle)
    assert train(capsys, square, "--epochs", "1", "--save", str(m))[0] == 0
    code, _, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--backend", "numpy", "--resume",
                           str(m), "--epochs", "1", "--train-on-validation")
    one_line_error(code, err, "trained on 300 images, the training images alone", "without --train-on-validation")
    with pytest.raises(GpubpError, match="plateau schedule watches the validation accuracy"):
        Network([16, 8, 10], backend="numpy", seed=1).sgd(
            tuple(load_mnist_pair(square)), epochs=1, schedule="plateau", progress=False)


def load_mnist_pair(directory):
    from gpubp.data import load_mnist

    return load_mnist(directory, verify=False)["train"]


def test_a_long_run_says_how_long_it_will_take_after_its_first_epoch(capsys, monkeypatch, square):
    monkeypatch.setattr(cli, "LONG_RUN", 0.0)
    code, out, err = run_cli(capsys, "train", "--data-dir", square, "--no-verify", "--sizes", "16,8,10",
                             "--backend", "numpy", "--epochs", "2", "--batch-size", "50")
    assert code == 0, err
    assert "2 epochs take about" in out and out.count("epochs take about") == 1


def test_recipes_lists_each_with_its_source_published_and_measured_result(capsys):
    code, out, err = run_cli(capsys, "recipes")
    assert code == 0, err
    for name, recipe in RECIPES.items():
        block = out.split(f"\n{name}\n", 1)[1].split("\n\n")[0]
        assert recipe.source in block and recipe.published in block and recipe.command() in block
        assert ("not measured" in block) == (recipe.measured is None)
        if recipe.measured:
            assert "measured with: gpubp train" in block
    for required in ("network.py", "network2", "simard-affine", "simard-elastic", "dropout", "ciresan", "fast",
                     "best-cpu"):
        assert required in RECIPES


def test_evaluate_report_writes_a_png(capsys, tmp_path, square):
    m, png = tmp_path / "e.npz", tmp_path / "report.png"
    assert train(capsys, square, "--epochs", "1", "--save", str(m))[0] == 0
    code, out, err = run_cli(capsys, "evaluate", str(m), "--data-dir", square, "--no-verify", "--report", str(png))
    assert code == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert f"wrote the report {png}" in out


@pytest.mark.parametrize("name,needle", [("r.xyz", "cannot write .xyz"), ("no/r.png", "does not exist")])
def test_evaluate_report_bad_paths_are_one_line_before_any_work(capsys, tmp_path, name, needle):
    code, _, err = run_cli(capsys, "evaluate", str(tmp_path / "missing.npz"), "--report", str(tmp_path / name))
    one_line_error(code, err, needle)
