"""`gpubp plot`: training curves from --metrics-out files, labelled by what differs between the runs."""

import json
import sys

import pytest
from helpers import one_line_error, run_cli


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, tiny_dir):
    d = tmp_path_factory.mktemp("runs")
    for name, eta in (("fast", "3"), ("slow", "0.5")):
        argv = ["train", "--data-dir", tiny_dir, "--no-verify", "--sizes", "10,8,10", "--epochs", "3", "--eta", eta,
                "--backend", "numpy", "--seed", "1", "--quiet", "--metrics-out", str(d / f"{name}.json")]
        assert run_cli(None, *argv)[0] == 0
    return d / "fast.json", d / "slow.json"


def test_two_runs_overlaid_and_labelled_by_what_differs(capsys, tmp_path, two_runs):
    out = tmp_path / "curves.png"
    code, stdout, err = run_cli(capsys, "plot", *map(str, two_runs), "-o", str(out))
    assert code == 0, err
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    assert f"wrote the plot {out}" in stdout


def test_the_figure_has_two_panels_and_a_line_per_run(two_runs):
    import matplotlib.pyplot as plt

    from gpubp import curves

    runs = [curves.load_run(p) for p in two_runs]
    fig = curves.figure(runs, curves.labels(runs, two_runs))
    acc, cost = fig.axes
    assert [l.get_label() for l in acc.lines] == ["eta=3.0", "eta=0.5"] == [l.get_label() for l in cost.lines]
    assert list(acc.lines[0].get_xdata()) == [1, 2, 3]
    assert acc.get_ylabel() == "validation accuracy" and cost.get_ylabel() == "training cost"
    plt.close(fig)


def test_labels_fall_back_to_file_names():
    from gpubp import curves

    runs = [{"config": {"eta": 1.0, "sizes": [1, 2]}}, {"config": {"eta": 1.0, "sizes": [1, 2]}}]
    assert curves.labels(runs, ["a/x.json", "b/y.json"]) == ["x", "y"]
    runs[1]["config"]["sizes"] = [1, 3, 2]
    assert curves.labels(runs, ["x.json", "y.json"]) == ["sizes=1,2", "sizes=1,3,2"]


@pytest.mark.parametrize("content,needle", [
    (None, "does not exist"),
    ("{not json", "is not JSON"),
    ('{"cases": []}', "is not a gpubp train metrics file"),
    ('{"epochs": []}', "holds no epochs"),
])
def test_bad_run_files_are_one_line(capsys, tmp_path, content, needle):
    path = tmp_path / "run.json"
    if content is not None:
        path.write_text(content)
    one_line_error(*run_cli(capsys, "plot", str(path), "-o", str(tmp_path / "c.png"))[::2], str(path), needle)
    assert not (tmp_path / "c.png").exists()


def test_plot_without_matplotlib_is_one_line(capsys, tmp_path, two_runs, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    one_line_error(*run_cli(capsys, "plot", str(two_runs[0]), "-o", str(tmp_path / "c.png"))[::2],
                   "uv run --extra plot gpubp plot", "pip install -e '.[plot]'")


def test_plot_to_a_missing_directory_fails_before_reading(capsys, tmp_path, two_runs):
    one_line_error(*run_cli(capsys, "plot", str(two_runs[0]), "-o", str(tmp_path / "no" / "c.png"))[::2], "does not exist")


def test_a_run_without_training_cost_says_so(tmp_path, two_runs):
    import matplotlib.pyplot as plt

    from gpubp import curves

    doc = json.loads(two_runs[0].read_text())
    for r in doc["epochs"]:
        r["train_cost"] = None
    fig = curves.figure([doc], ["run"])
    assert not fig.axes[1].lines and "--no-train-cost" in fig.axes[1].texts[0].get_text()
    plt.close(fig)
