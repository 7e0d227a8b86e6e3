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


def edited(two_runs, tmp_path, name="edited", edit=None):
    """A copy of the first run's metrics, changed by ``edit(doc)``."""
    doc = json.loads(two_runs[0].read_text())
    edit(doc)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(doc))
    return path, doc


def test_a_run_without_any_accuracy_or_cost_plots_without_a_legend_error(capsys, tmp_path, two_runs):
    def nulls(doc):
        for r in doc["epochs"]:
            r["validation_accuracy"] = r["train_cost"] = None
    path, _ = edited(two_runs, tmp_path, edit=nulls)
    code, _, err = run_cli(capsys, "plot", str(path), "-o", str(tmp_path / "c.png"))
    assert code == 0, err


def test_an_early_stopping_marker_is_no_legend_entry(two_runs):
    import matplotlib.pyplot as plt

    from gpubp import curves

    doc = json.loads(two_runs[0].read_text())
    doc.update(restored_best=True, best_epoch=2, stopped_early=True)
    fig = curves.figure([doc], ["run"])
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["run"]
    plt.close(fig)


def test_a_flat_cost_is_drawn_flat_and_one_epoch_has_whole_ticks(two_runs):
    import matplotlib.pyplot as plt

    from gpubp import curves

    doc = json.loads(two_runs[0].read_text())
    doc["epochs"] = doc["epochs"][:1]
    one = curves.figure([doc], ["run"])
    one.canvas.draw()
    for ax in one.axes:
        assert all(float(t).is_integer() for t in ax.get_xticks() if ax.get_xlim()[0] <= t <= ax.get_xlim()[1])
    doc = json.loads(two_runs[0].read_text())
    for i, r in enumerate(doc["epochs"]):
        r["train_cost"] = 0.5 - 1e-6 * i
    flat = curves.figure([doc], ["run"])
    cost = flat.axes[1]
    lo, hi = cost.get_ylim()
    assert cost.get_yscale() == "linear" and (hi - lo) > 0.01  # 3e-6 of change stays a flat line
    plt.close(one)
    plt.close(flat)


def test_labels_say_which_epochs_a_run_holds(two_runs, tmp_path):
    from gpubp import curves

    def interrupted(doc):
        doc["epochs"] = doc["epochs"][:2]
        doc["interrupted"] = {"epoch": 3, "completed": 2}

    def resumed(doc):
        for r in doc["epochs"]:
            r["epoch"] += 3
    runs = [edited(two_runs, tmp_path, name, edit)[1] for name, edit in (("cut", interrupted), ("more", resumed))]
    assert curves.labels(runs, ["cut.json", "more.json"]) == ["epochs=1-2 (interrupted)", "epochs=4-6"]


def test_the_extension_chooses_the_format_or_is_refused(capsys, tmp_path, two_runs):
    pdf = tmp_path / "p.pdf"
    assert run_cli(capsys, "plot", str(two_runs[0]), "-o", str(pdf))[0] == 0
    assert pdf.read_bytes()[:5] == b"%PDF-"
    one_line_error(*run_cli(capsys, "plot", str(two_runs[0]), "-o", str(tmp_path / "p.xyz"))[::2], ".xyz", ".png")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pdf"]


def test_a_value_that_is_not_a_number_is_one_line(capsys, tmp_path, two_runs):
    path, _ = edited(two_runs, tmp_path, edit=lambda doc: doc["epochs"][1].update(validation_accuracy="high"))
    one_line_error(*run_cli(capsys, "plot", str(path), "-o", str(tmp_path / "c.png"))[::2],
                   "epoch 2's validation_accuracy is \"high\"")
