"""The command line: gpubp train | evaluate | bench | sweep | plot | samples | recipes | info.

Every error (bad argument, file, model or data) is one line on stderr and exit status 2.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import threading
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from .activations import ACTIVATIONS
from .augment import add_augment_arguments, add_samples_arguments, augment_from_args, samples_figure
from .backends import BACKEND_NAMES, names_with
from .costs import COSTS
from .data import N_CLASSES
from .errors import GpubpError, TrainingInterrupted
from .fileio import in_place, provenance, same_file, write_json
from .network import GEMM_ROUTES, INIT_CHOICES, check_sizes
from .optimizers import OPTIMIZERS
from .recipes import RECIPES
from .schedules import SCHEDULES
from .training import graph_mode


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2, no usage dump; a subcommand's prog is "gpubp train"
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _sizes(text):
    try:
        sizes = [int(s) for s in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"sizes must be comma-separated integers like 784,30,10, got {text!r}") from None
    if len(sizes) < 2 or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"sizes need two or more positive layer widths, got {text!r}")
    try:  # the parameter bound, before any data is read
        return check_sizes(sizes)
    except GpubpError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


_KIND_NAMES = {int: "an integer", float: "a number"}


MAX_EPOCHS = 1_000_000  # more would never finish; a mistyped count should be said, not started
HEARTBEAT_SECONDS = 30.0  # a piped sweep's progress line comes at most this often


def _number(kind, lo, inclusive, hi=None):
    def parse(text):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {_KIND_NAMES[kind]}, got {text!r}") from None
        if not math.isfinite(v) or (v < lo if inclusive else v <= lo):
            raise argparse.ArgumentTypeError(f"must be {'>=' if inclusive else '>'} {lo}, got {text}")
        if hi is not None and v > hi:
            raise argparse.ArgumentTypeError(f"must be at most {hi:,}, got {text}")
        return v
    return parse


def _list(kind):
    def parse(text):
        if text.strip(" ,") and any(not s.strip() for s in text.split(",")):  # 0.5,,1 is a typo, not two values
            raise argparse.ArgumentTypeError(f"the list {text!r} has an empty entry: give values joined by single "
                                             f"commas, like 0.1,0.5")
        try:
            values = [kind(s.strip()) for s in text.split(",") if s.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {_KIND_NAMES.get(kind, 'value')}s, "
                                             f"got {text!r}") from None
        if not values:  # "," would otherwise silently mean the defaults
            raise argparse.ArgumentTypeError(f"the list {text!r} is empty: give at least one value")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__

    p = _Parser(prog="gpubp", description="Backpropagation from scratch on the CPU (NumPy) and the GPU (CuPy).")
    p.add_argument("--version", action="version", version=f"gpubp {__version__}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _train_parser(sub.add_parser("train", help="train a network on MNIST (defaults: network.py's run)"))

    e = sub.add_parser("evaluate", help="accuracy of a saved model on the MNIST test set")
    e.add_argument("model", type=Path, metavar="MODEL.npz")
    e.add_argument("--report", type=Path, metavar="REPORT.png", default=None,
                   help="also draw the confusion matrix, the worst-classified test digits and the first layer's "
                        "weights into this PNG (default: none)")
    _common(e)
    e.set_defaults(func=cmd_evaluate)

    b = sub.add_parser("bench", help="benchmark training steps on CPU and GPU (and PyTorch eager when it imports)")
    b.add_argument("--backends", type=_list(str), default=None,
                   help="e.g. numpy,native,cupy,emulated (default: numpy,native,cupy; cupy is skipped, saying why, "
                        "without a GPU, and native without a C++ compiler)")
    b.add_argument("--sizes", type=_sizes, nargs="+", default=None, metavar="784,30,10",
                   help="networks, each as widths joined by commas, several allowed (default: 784,30,10 "
                        "784,100,10 784,1024,1024,10 784,4096,4096,10; --quick drops the last)")
    b.add_argument("--batch-sizes", type=_list(int), default=None, help="e.g. 10,128,1024 (default 10,128,1024)")
    b.add_argument("--steps", type=_number(int, 1, True), default=None,
                   help="timed steps per repeat (default 20, 10 with --quick)")
    b.add_argument("--repeats", type=_number(int, 1, True), default=None,
                   help="repeats per case, the median reported (default 5, 3 with --quick)")
    b.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="floating-point type of the parameters and the data (default float32)")
    b.add_argument("--routes", type=_list(str), default=None,
                   help="the products' routes to time on the kernel backends: blas, own (default: blas,own)")
    b.add_argument("--modes", type=_list(str), default=None,
                   help="eager, graph: steps issued one by one, or replayed as one captured graph where the "
                        "backend can (default: eager,graph)")
    b.add_argument("--threads", type=_number(int, 1, True), default=None, metavar="N",
                   help="threads of NumPy's BLAS (OpenBLAS) while timing, recorded in the JSON (default: the BLAS's "
                        "own, usually one per core)")
    b.add_argument("--quick", action="store_true", help="a small sweep that finishes in under a minute")
    b.add_argument("--json", type=Path, metavar="OUT.json",
                   help="write every number and the machine (default: not written)")
    b.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="plot GPU/CPU speed-up vs batch size (default: no plot)")
    _data_args(b)
    b.set_defaults(func=cmd_bench)

    _sweep_parser(sub.add_parser("sweep", help="train a grid of runs (seeds x eta x lambda), many models at once"))

    c = sub.add_parser("plot", help="training curves (validation accuracy, training cost) of runs saved with "
                                    "train --metrics-out")
    c.add_argument("runs", nargs="+", type=Path, metavar="RUN.json", help="one or more metrics files, overlaid")
    c.add_argument("-o", "--out", type=Path, default=Path("curves.png"), metavar="OUT.png",
                   help="the PNG to write (default curves.png)")
    c.set_defaults(func=cmd_plot)

    s = sub.add_parser("samples", help="training images beside their distortions: what a network trained with "
                                       "--augment sees")
    add_samples_arguments(s)
    _common(s)
    s.set_defaults(func=cmd_samples)

    r = sub.add_parser("recipes", help="the named configurations of gpubp train --recipe: source, published and "
                                       "measured results")
    r.set_defaults(func=cmd_recipes)

    i = sub.add_parser("info", help="backend, device, library versions, BLAS threads")
    i.add_argument("--backend", choices=list(BACKEND_NAMES), default=None,
                   help="the backend to describe (default: $GPUBP_BACKEND or auto)")
    i.set_defaults(func=cmd_info)
    return p


def _model_args(p):
    """What a network is and how it learns, the same for train and sweep."""
    p.add_argument("--sizes", type=_sizes, default=[784, 30, 10], help="layer widths (default 784,30,10)")
    p.add_argument("--cost", choices=list(COSTS), default="quadratic",
                   help="output cost (default quadratic; log_likelihood has a softmax output layer)")
    p.add_argument("--activation", choices=list(ACTIVATIONS), default="sigmoid",
                   help="hidden layers' activation (default sigmoid)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default="sgd", help="update rule (default sgd)")


def _number_args(p):
    """The floating-point type and the weights' initialisation, the same for train and sweep."""
    p.add_argument("--dtype", choices=["float32", "float64"], default="float32",
                   help="floating-point type of the parameters and the data (default float32)")
    p.add_argument("--init", choices=list(INIT_CHOICES), default="default",
                   help="weights: the activation's default (network2's N(0,1/n_in); he, N(0,2/n_in), for relu), "
                        "or network2, large (network.py's N(0,1)), he (default: default)")


def _train_parser(t):
    _model_args(t)
    t.add_argument("--momentum", type=_number(float, 0, True), default=None, metavar="MU",
                   help="mu for --optimizer momentum (default 0.9)")
    t.add_argument("--eta", type=_number(float, 0, False), default=None,
                   help="learning rate (default: 3.0 for sgd, 0.3 for momentum, 0.001 for adam)")
    t.add_argument("--lmbda", type=_number(float, 0, True), default=0.0, help="L2 strength lambda (default 0.0)")
    t.add_argument("--batch-size", type=_number(int, 1, True), default=10, help="mini-batch size (default 10)")
    t.add_argument("--epochs", type=_number(int, 0, True, MAX_EPOCHS), default=30,
                   help="epochs to train (default 30); with --resume, this many MORE epochs")
    _number_args(t)
    t.add_argument("--early-stopping", type=_number(int, 1, True), default=None, metavar="N",
                   help="stop after N epochs without a better validation accuracy (default: train every epoch)")
    t.add_argument("--train-on-validation", action="store_true",
                   help="train on the validation images too (all 60,000 MNIST training images), for a final run "
                        "once the settings are chosen on the validation set: no validation accuracy is measured, "
                        "so --early-stopping and --schedule plateau are refused; with --resume, the file's choice "
                        "(default: train on the first 50,000, measure the last 10,000)")
    t.add_argument("--no-train-cost", action="store_true",
                   help="skip the per-epoch training-cost pass over the training set (train_cost is null)")
    t.add_argument("--gemm", choices=list(GEMM_ROUTES), default=None,
                   help="how a step's products run: blas (the BLAS, cuBLAS on a GPU, then fused kernels) or own "
                        f"(our layer kernels, 3L-1 launches a step; --backend {names_with('compiles_kernels')}) "
                        "(default: own on the native backend, blas elsewhere)")
    graph = t.add_mutually_exclusive_group()
    graph.add_argument("--graph", dest="graph", action="store_true", default=None,
                       help="replay each epoch as one captured graph, or fail saying why not (default: on for "
                            f"the {names_with('graphs_by_default', 'and')} backends when the route "
                            "can be captured, eager elsewhere)")
    graph.add_argument("--no-graph", dest="graph", action="store_false", default=None,
                       help="issue every launch eagerly (default: see --graph)")
    t.add_argument("--tf32", action="store_true",
                   help="float32 products read their inputs as TF32 (tensor cores on a GPU; rounded inputs "
                        "elsewhere, to see the effect on accuracy) (default: off)")
    _common(t)
    t.add_argument("--seed", type=_number(int, 0, True), default=None,
                   help="seed for weights and shuffling, >= 0 (default: a random one, printed on the first line and "
                        "in the metrics)")
    t.add_argument("--resume", type=Path, metavar="MODEL.npz",
                   help="continue the run saved in MODEL.npz: its model, optimizer state, shuffle, epoch count and "
                        "batch size; --optimizer, --eta, --lmbda, --momentum, --batch-size override the file's only "
                        "when given; --sizes, --cost, --activation, --dtype, --init, --seed must agree with it "
                        "(default: a new run)")
    t.add_argument("--save", type=Path, metavar="MODEL.npz",
                   help="write the trained model here; it may be the --resume file (default: not saved)")
    t.add_argument("--metrics-out", type=Path, metavar="RUN.json",
                   help="write config and per-epoch metrics as JSON (default: not written)")
    t.add_argument("--quiet", action="store_true", help="no progress bar and no per-epoch lines")
    t.add_argument("--recipe", choices=list(RECIPES), default=None, metavar="NAME",
                   help=f"a named configuration ({', '.join(RECIPES)}; gpubp recipes lists them): every flag given "
                        f"here overrides it (default: none)")
    reg = t.add_argument_group("regularisation and schedules")
    reg.add_argument("--dropout", type=_number(float, 0, True, 1), default=None, metavar="P",
                     help="inverted dropout of the hidden units with probability P < 1 (default 0)")
    reg.add_argument("--input-dropout", type=_number(float, 0, True, 1), default=None, metavar="Q",
                     help="inverted dropout of the inputs with probability Q < 1 (default 0)")
    reg.add_argument("--max-norm", type=_number(float, 0, True), default=None, metavar="C",
                     help="after every step, scale each hidden unit's incoming weights back to norm <= C "
                          "(default: off; 0 turns a resumed run's off)")
    reg.add_argument("--schedule", choices=list(SCHEDULES), default=None,
                     help="eta per epoch: constant, step (x0.5 every 10), exp (x0.95 an epoch), cosine (to 0 over "
                          "the run), plateau (Nielsen ch. 3: halve after 10 epochs without a better validation "
                          "accuracy, stop at eta/128) (default constant)")
    reg.add_argument("--warmup", type=_number(int, 0, True), default=None, metavar="N",
                     help="linear warm-up of eta over the first N epochs (default 0)")
    add_augment_arguments(t)
    t.set_defaults(func=cmd_train)


def _sweep_parser(s):
    _model_args(s)
    s.add_argument("--momentum", type=_number(float, 0, True), default=0.9, metavar="MU",
                   help="mu for --optimizer momentum (default 0.9)")
    s.add_argument("--seeds", default="1", help="seeds for weights and shuffling, e.g. 1-8 or 1,3,5 (default 1)")
    s.add_argument("--eta", type=_list(float), default=None,
                   help="learning rates, e.g. 0.1,0.5 (default: the optimizer's, 3.0 for sgd)")
    s.add_argument("--lmbda", type=_list(float), default=None, help="L2 strengths, e.g. 0,5 (default 0)")
    s.add_argument("--batch-size", type=_number(int, 1, True), default=10, help="mini-batch size (default 10)")
    s.add_argument("--epochs", type=_number(int, 1, True, MAX_EPOCHS), default=30, help="epochs to train (default 30)")
    _number_args(s)
    s.add_argument("--group-size", type=_number(int, 1, True), default=None, metavar="K",
                   help="runs per group (default 16): one stack on a GPU; on a CPU, networks spread over --threads")
    s.add_argument("--threads", type=_number(int, 1, True), default=None,
                   help="on a CPU backend, a group's models trained at once, a thread each (default: every core); "
                        "on a GPU, groups trained at once, a stack each (default 1)")
    s.add_argument("--train-cost", action="store_true",
                   help="also record each epoch's training cost, a forward pass over the training set (default off)")
    s.add_argument("--ray", metavar="auto|HOST:PORT", default=None,
                   help="send the groups to a Ray cluster as tasks, retried if a worker dies (the ray extra; "
                        "default: train them here)")
    _common(s)
    s.add_argument("--json", type=Path, metavar="OUT.json",
                   help="write every run's config and per-epoch history, and the machine (default: not written)")
    s.add_argument("--plot", type=Path, metavar="OUT.png",
                   help="plot test accuracy per config with the spread over seeds (default: no plot)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=cmd_sweep)


def _common(p):
    p.add_argument("--backend", choices=list(BACKEND_NAMES), default=None,
                   help="default: $GPUBP_BACKEND or auto (CuPy when a GPU answers, else NumPy); native: our "
                        "kernels compiled for this CPU, usually the fastest on a CPU (see the README)")
    _data_args(p)


def _data_args(p):
    p.add_argument("--data-dir", metavar="DIR",
                   help="MNIST directory (default: $GPUBP_DATA_DIR, then ~/.cache/gpubp/mnist, downloaded on "
                        "first use)")
    p.add_argument("--no-verify", action="store_true", help="skip the MD5 check (other MNIST-format data sets)")


def _check_writable(path: Path | None, what: str) -> None:
    """Fail before the work, not after it, when an output cannot be written."""
    if path is None:
        return
    if path.is_dir():
        raise GpubpError(f"{what} {path} is a directory: give a file name")
    if in_place(path):  # /dev/null, /dev/stdout, a FIFO: written in place, never renamed over
        if not os.access(path, os.W_OK):
            raise GpubpError(f"cannot write {what} {path}: it is not writable")
        return
    parent = path.parent
    if not parent.is_dir():
        raise GpubpError(f"cannot write {what} {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise GpubpError(f"cannot write {what} {path}: directory {parent} is not writable")


def _check_distinct(outputs, may_share=()) -> None:
    """Two outputs (or an output and an input) on one file would leave only the last written: refuse
    before the work. ``outputs``: (flag, path) pairs; ``may_share``: flag pairs that may name one file."""
    given = [(flag, path) for flag, path in outputs if path is not None]
    for i, (flag, path) in enumerate(given):
        for other, other_path in given[i + 1:]:
            if {flag, other} not in [set(p) for p in may_share] and same_file(path, other_path):
                raise GpubpError(f"{flag} and {other} both name {path}: one would overwrite the other; "
                                 f"give each its own file")


class _Interrupts:
    """SIGINT and SIGTERM (sent by job schedulers, timeout and container stops) both raise
    KeyboardInterrupt, so every command keeps what it finished either way. One Ctrl-C can arrive
    twice a moment apart (uv run forwards it as the terminal sends it too): a second one within a
    second is the same interrupt. While outputs are written (``held``) an interrupt waits, so
    nothing half-done is lost; ``signum`` is the last signal that interrupted (for the exit status)."""

    ECHO = 1.0  # seconds

    def __init__(self):
        self.signum, self.last, self.holding = signal.SIGINT, None, 0

    def __call__(self, signum, frame):
        now = time.monotonic()
        if self.holding or (self.last is not None and now - self.last < self.ECHO):
            return
        self.signum, self.last = signum, now
        raise KeyboardInterrupt

    @contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        self.signum, self.last = signal.SIGINT, None
        before = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            yield
        finally:
            for s, handler in before.items():
                signal.signal(s, handler)

    @contextmanager
    def held(self):
        self.holding += 1
        try:
            yield
        finally:
            self.holding -= 1

    def status(self) -> int:
        return 128 + int(self.signum)  # 130 for Ctrl-C, 143 for SIGTERM, as a shell reports them


_INTERRUPTS = _Interrupts()


def _write_outputs(outputs, say) -> tuple[list[str], str]:
    """Write each (what, path, write) whose path is set, each on its own, so that one failure (a full
    disk) loses only that file. Returns (written, "" or one line: what was not written and why, and
    what was). Every writer is atomic, so a failed output leaves no file and no partial file, and an
    interrupt waits until the writing is done."""
    with _INTERRUPTS.held():
        return _write_each(outputs, say)


def _write_each(outputs, say) -> tuple[list[str], str]:
    written, failed = [], []
    for what, path, write in outputs:
        if path is None:
            continue
        try:
            write(path)
        except (OSError, GpubpError) as e:
            failed.append(f"the {what} {path} ({e.strerror if isinstance(e, OSError) and e.strerror else e})")
        else:
            written.append(f"the {what} {path}")
            say(f"wrote the {what} {path}")
    if not failed:
        return written, ""
    return written, "did not write " + " nor ".join(failed) + ("; wrote " + " and ".join(written) if written else "")


def _load_data(args, sizes, source, split="train"):
    """Load the data and check that ``sizes`` (from ``source``: --sizes or a model file) fit it;
    the error names both sides, since a mismatch is found far from where either was chosen."""
    from .data import load_mnist, resolve_dir

    data = load_mnist(args.data_dir, verify=not args.no_verify)
    width = data[split][0].shape[1]
    if sizes[0] != width or sizes[-1] != N_CLASSES:
        images = resolve_dir(args.data_dir)[0] / f"{'t10k' if split == 'test' else 'train'}-images-idx3-ubyte"
        raise GpubpError(f"{source} has {sizes[0]} inputs and {sizes[-1]} outputs, but the images in {images} have "
                         f"{width} pixels and the labels {N_CLASSES} classes: the sizes must start with {width} "
                         f"and end with {N_CLASSES}")
    return data


def cmd_train(args) -> int:
    from .backends import get_backend

    _check_writable(args.save, "model file")
    _check_writable(args.metrics_out, "metrics file")
    _check_distinct([("--resume", args.resume), ("--save", args.save), ("--metrics-out", args.metrics_out)],
                    may_share=[("--save", "--resume")])
    given = _apply_recipe(args, _given(args))
    began = time.perf_counter()
    be = get_backend(args.backend)
    _check_route(be, args)
    net, data = _model_and_data(args, given, be)
    start = net.epochs_trained
    say = (lambda *a: None) if args.quiet else _say
    say(f"gpubp train: {net} on {be.device} ({be.reason}), seed {net.seed}")
    graph, graph_why = graph_mode(net, args.graph)
    say(f"each epoch is one captured graph ({graph_why})" if graph else f"each epoch runs {graph_why}")
    if be.compiles_kernels:
        say(f"kernels compiled (or loaded from cache) in {be.warmup():.2f} s")
    if args.resume:
        say(f"resuming {args.resume} after epoch {start} ({net.optimizer.name}, batch size {net.mini_batch_size}): "
            f"{args.epochs} more epochs")
        if "optimizer" in given and args.optimizer != net.optimizer.name:
            say(f"--optimizer {args.optimizer} replaces the file's {net.optimizer.name}: its state starts from zero, "
                f"so this is not an exact continuation")

    def keep(dest):
        """With --resume, what was not given comes from the file (None tells training to keep the saved value)."""
        return getattr(args, dest) if dest in given or not args.resume else None

    def on_epoch(r):
        cost = "" if r["train_cost"] is None else f"train cost {r['train_cost']:.4f}, "
        eta = f"eta {r['eta']:.4g}, " if scheduled else ""
        acc = "" if r["validation_accuracy"] is None else f"validation accuracy {r['validation_accuracy']:.4f}, "
        say(f"epoch {r['epoch']}/{start + args.epochs}: {acc}{cost}{eta}{r['seconds']:.2f} s ({r['mode']})")
        if r["epoch"] == start + 1 and args.epochs > 1:
            _say_how_long(say, r, args.epochs)

    extras = _extras(args, given)
    scheduled = extras["schedule"] is not None or extras["warmup"] is not None or bool(
        args.resume and (net.run_settings or {}).get("schedule"))

    batch = args.batch_size if "batch_size" in given or not args.resume else net.mini_batch_size
    if batch and batch >= len(data["train"][1]):
        print(f"gpubp train: warning: batch size {batch:,} is not less than the {len(data['train'][1]):,} training "
              f"images: each epoch is one step over all of them", file=sys.stderr)
    interrupted = None
    try:
        with _warnings_as_lines("train"):
            history = net.sgd(data["train"], epochs=args.epochs, mini_batch_size=keep("batch_size"), eta=args.eta,
                              lmbda=keep("lmbda"), evaluation_data=data["validation"],
                              early_stopping=args.early_stopping, monitor_training_cost=not args.no_train_cost,
                              progress=False if args.quiet else None, on_epoch=on_epoch,
                              optimizer=keep("optimizer"), momentum=args.momentum, resume=bool(args.resume),
                              graph=graph, **extras)
    except TrainingInterrupted as e:
        history, interrupted = e.history, e
    test = None
    if interrupted is None:
        if history.restored_best:
            say(f"early stopping: restored the weights of epoch {history.best_epoch} (validation accuracy "
                f"{history.best_accuracy:.4f}), the best of this run")
        try:
            test = net.measure(*data["test"], cost=False)
            print(f"test accuracy {test['accuracy']:.4f} ({test['correct']}/{test['n']})")
        except KeyboardInterrupt:  # every epoch finished: keep them all
            interrupted = TrainingInterrupted(history, net.epochs_trained, None)
    config = {**net.config(), **net.optimizer.config(), "batch_size": net.mini_batch_size, "epochs": args.epochs,
              "early_stopping": args.early_stopping, "train_cost": not args.no_train_cost,
              "train_on_validation": args.train_on_validation, "graph": graph,
              "graph_reason": graph_why, "recipe": args.recipe, **(net.run_settings or {})}
    metrics = {**provenance(args.argv), "config": config, "backend": be.name, "device": be.device,
               "resumed_from": {"path": str(args.resume), "epochs": start} if args.resume else None,
               "epochs": history, **history.summary(),
               "interrupted": {"epoch": interrupted.epoch, "completed": interrupted.completed} if interrupted else None,
               "test_accuracy": test["accuracy"] if test else None}
    outputs = [("model", args.save, net.save), ("metrics", args.metrics_out, lambda p: write_json(p, metrics))]
    if interrupted is not None and interrupted.completed == start:  # no epoch finished: keep what is there
        outputs = []
    written, failed = _write_outputs(outputs, say)
    if interrupted is not None:
        print(f"gpubp train: {_interrupted_line(interrupted, written, failed, start)}", file=sys.stderr)
        return _INTERRUPTS.status()
    say(f"total {time.perf_counter() - began:.1f} s")
    if failed:
        raise GpubpError(failed)
    return 0


AUGMENT_DESTS = ("augment", "shift", "rotate", "scale", "shear", "elastic_alpha", "elastic_sigma")
LONG_RUN = 600  # seconds: a run estimated to take longer says so after its first epoch


def _apply_recipe(args, given: set[str]) -> set[str]:
    """--recipe NAME: its flags where the command line gave none; the recipe's flags count as given."""
    if args.recipe is None:
        return given
    from .recipes import get_recipe

    recipe = get_recipe(args.recipe)
    for dest, value in recipe.flags.items():
        if dest not in given:
            setattr(args, dest, list(value) if isinstance(value, (list, tuple)) else value)
    return given | set(recipe.flags)


def _extras(args, given) -> dict:
    """sgd's augment, max_norm, schedule and warmup from the flags; None (with --resume: the file's) where
    not given. Augmentation flags that distort nothing turn a resumed run's augmentation off."""
    augment = None
    if any(d in given for d in AUGMENT_DESTS) or not args.resume:
        augment = augment_from_args(args) or (False if args.resume else None)
    return {"augment": augment, "max_norm": args.max_norm, "schedule": args.schedule, "warmup": args.warmup}


def _say_how_long(say, record, epochs) -> None:
    """After the first epoch of a long run: how long all of its epochs will take at this pace."""
    per = record["seconds"] + record.get("eval_seconds", 0.0)
    total = per * epochs
    if total > LONG_RUN:
        say(f"at {per:.1f} s an epoch (training and evaluation), {epochs} epochs take about {_duration(total)} "
            f"on this machine")


def _duration(seconds: float) -> str:
    if seconds < 3600:
        return f"{seconds / 60:.0f} minutes"
    if seconds < 3 * 86400:
        return f"{seconds / 3600:.1f} hours"
    return f"{seconds / 86400:.1f} days"


def _interrupted_line(e, written, failed, start) -> str:
    """'interrupted in epoch K: saved the model M and the metrics R after epoch K-1', and what failed."""
    where = f"in epoch {e.epoch}" if e.epoch else f"after epoch {e.completed}"
    if e.completed == start:
        return f"interrupted {where}: no epoch finished, so nothing was written"
    if written:
        kept = f"saved {' and '.join(written)} after epoch {e.completed}"
    elif not failed:
        kept = f"nothing saved (no --save or --metrics-out); epoch {e.completed} was the last to finish"
    else:
        kept = ""
    return f"interrupted {where}: " + "; ".join(x for x in (kept, failed) if x)


def _say(*args) -> None:
    """A progress line, flushed: piped (to a log or tee) stdout is block-buffered and would show nothing
    until the end."""
    print(*args, flush=True)


def _model_and_data(args, given, be):
    """The network (new, or loaded from --resume and checked against the flags) and the data it fits."""
    from .network import Network

    if args.resume:
        net = Network.load(args.resume, backend=be, gemm=args.gemm, tf32=args.tf32 if "tf32" in given else None)
        _check_resume(args, given, net)
        optimizer = args.optimizer if "optimizer" in given else net.optimizer.name
    else:
        optimizer = args.optimizer
    if args.momentum is not None and optimizer != "momentum":
        raise GpubpError(f"--momentum applies to --optimizer momentum, not {optimizer}")
    if args.resume:
        data = _load_data(args, net.sizes, f"model {args.resume}")
        return net, _training_set(args, given, data, net)
    data = _training_set(args, given, _load_data(args, args.sizes, f"--sizes {','.join(map(str, args.sizes))}"))
    return Network(args.sizes, cost=args.cost, activation=args.activation, backend=be, dtype=args.dtype,
                   seed=args.seed, init=args.init, gemm=args.gemm, tf32=args.tf32, **_dropout(args)), data


def _training_set(args, given, data, net=None) -> dict:
    """--train-on-validation: the validation images join the training set and nothing is held out.
    A resumed run trains on the set its file was trained on (its optimizer's n says which)."""
    n_all = len(data["train"][1]) + len(data["validation"][1])
    if net is not None:
        saved = net.optimizer.n == n_all
        if "train_on_validation" in given and args.train_on_validation != saved:
            raise GpubpError(f"{args.resume} was trained on {net.optimizer.n:,} images, "
                             f"{'the training and validation images' if saved else 'the training images alone'}: "
                             f"resume it {'with' if saved else 'without'} --train-on-validation")
        args.train_on_validation = saved
    if not args.train_on_validation:
        return data
    for flag, used in (("--early-stopping", args.early_stopping is not None), ("--schedule plateau",
                                                                                args.schedule == "plateau")):
        if used:
            raise GpubpError(f"{flag} watches the validation accuracy, and --train-on-validation trains on the "
                             f"validation images: leave one of them out")
    import numpy as np

    X = np.concatenate([data["train"][0], data["validation"][0]])
    y = np.concatenate([data["train"][1], data["validation"][1]])
    return {"train": (X, y), "validation": None, "test": data["test"]}


def _dropout(args) -> dict:
    """Network's dropout arguments, for the flags given (none: the network as before)."""
    import inspect

    from .network import Network

    asked = {k: v for k, v in (("dropout", args.dropout), ("input_dropout", args.input_dropout)) if v}
    for k, v in asked.items():
        if v >= 1:
            raise GpubpError(f"--{k.replace('_', '-')} {v:g} would drop every unit: give a probability below 1")
    if asked and "dropout" not in inspect.signature(Network).parameters:
        raise GpubpError("--dropout and --input-dropout need a gpubp whose Network takes dropout=, input_dropout=; "
                         "this one has none: leave them out")
    return asked


def _check_resume(args, given, net) -> None:
    """A resumed run keeps the model it saved: flags that say otherwise are an error, not a surprise."""
    if net.optimizer is None:
        raise GpubpError(f"{args.resume} holds no optimizer state (it was saved before any training, or by gpubp "
                         f"0.1): there is no run to resume; train it without --resume")
    init = net.activation.init if args.init == "default" else args.init
    saved = {"sizes": (args.sizes, net.sizes), "cost": (args.cost, net.cost.name),
             "activation": (args.activation, net.activation.name), "dtype": (args.dtype, net.dtype.name),
             "init": (init, net.init), "seed": (args.seed, net.seed)}
    for dest, (flag, file) in saved.items():
        if dest in given and flag != file:
            show = (lambda v: ",".join(map(str, v))) if dest == "sizes" else str
            raise GpubpError(f"--{dest} {show(flag)} conflicts with {args.resume}, whose {dest} is {show(file)}: "
                             f"a resumed run keeps the model it saved; leave --{dest} out")


def _given(args) -> set[str]:
    """The destinations of the options given on the command line, as opposed to defaulted: the
    arguments parsed again with every default suppressed."""
    parser = build_parser()
    sub = _subparser(parser, args.command)
    for a in sub._actions:
        a.default = argparse.SUPPRESS
    ns, _ = parser.parse_known_args(args.argv[1:])
    return set(vars(ns))


@contextmanager
def _warnings_as_lines(command):
    """TrainingWarnings as one line each on stderr ("gpubp train: warning: ..."), every time they occur."""
    from .errors import TrainingWarning

    with warnings.catch_warnings():
        warnings.simplefilter("always", TrainingWarning)
        warnings.showwarning = lambda message, *a, **k: print(f"gpubp {command}: warning: {message}", file=sys.stderr)
        yield


def cmd_evaluate(args) -> int:
    from .backends import get_backend
    from .network import Network

    if args.report is not None:  # fail before any work: an unwritable path, no matplotlib, not a PNG
        from .figures import image_format, pyplot

        _check_writable(args.report, "report")
        image_format(args.report, "--report")
        pyplot("--report", "gpubp evaluate MODEL --report report.png")
    be = get_backend(args.backend)
    net = Network.load(args.model, backend=be)
    data = _load_data(args, net.sizes, f"model {args.model}", split="test")
    began = time.perf_counter()
    test = net.measure(*data["test"], cost=False)
    print(f"{args.model}: {net}")
    took = time.perf_counter() - began
    print(f"test accuracy {test['accuracy']:.4f} ({test['correct']}/{test['n']}) in {took:.2f} s")
    if args.report is not None:
        from .model_report import report

        _, failed = _write_outputs([("report", args.report, lambda p: report(net, *data["test"], p))], print)
        if failed:
            raise GpubpError(failed)
    return 0


def cmd_recipes(args) -> int:
    from .recipes import listing

    print(listing())
    return 0


def _check_json_and_plot(args, command):
    """--json and --plot can be written, and --plot's matplotlib is there: fail now, not after the run."""
    from .figures import image_format, pyplot

    _check_writable(args.json, "JSON file")
    _check_writable(args.plot, "plot")
    _check_distinct([("--json", args.json), ("--plot", args.plot)])
    if args.plot:
        image_format(args.plot)
    if args.plot:
        pyplot("--plot", f"gpubp {command} ...")


def cmd_bench(args) -> int:
    from . import bench
    from .bench.plot import plot

    _check_json_and_plot(args, "bench")
    for what, given, allowed in (("--routes", args.routes, bench.ROUTES), ("--modes", args.modes, bench.MODES)):
        if given is not None and (not given or not set(given) <= set(allowed)):
            raise GpubpError(f"{what} takes one or more of {', '.join(allowed)}, got {','.join(given) or 'nothing'}")
    with _blas_threads(args.threads):
        result = bench.run(backends=args.backends, sizes=args.sizes, batch_sizes=args.batch_sizes, steps=args.steps,
                           repeats=args.repeats, dtype=args.dtype, quick=args.quick, data_dir=args.data_dir,
                           verify=not args.no_verify, log=lambda m: print(m, file=sys.stderr, flush=True),
                           routes=args.routes or bench.ROUTES, modes=args.modes or bench.MODES)
    result["threads"] = args.threads
    m = result["machine"]
    print(f"machine: {m['cpu']}, {m['cores']} cores, NumPy {m['numpy']} ({m['blas']['name']} "
          f"{m['blas']['version']}, {m['blas']['threads']} threads), GPU: {m['gpu'] or 'none'}")
    print(f"{result['dtype']}, cost {result['cost']}, {result['steps']} steps x {result['repeats']} repeats per case, "
          f"epoch = {result['epoch_rows']} samples; GEMM rate {result['gemm_gflops']:.0f} GFLOP/s\n")
    print(bench.table(result))
    for s in result["skipped"]:
        print(f"\nskipped: {s}")
    if result["warnings"]:
        where = "on stderr above" + (", and in the JSON" if args.json else "")
        print(f"\n{len(result['warnings'])} warning(s) {where}: some of these numbers may not be trusted")
    result = {**provenance(args.argv), **result}
    outputs = [("JSON", args.json, lambda p: write_json(p, result))]
    if result["cases"]:
        outputs.append(("plot", args.plot, lambda p: plot(result, p)))
    written, failed = _write_outputs(outputs, lambda m: print(m, file=sys.stderr))
    if result["interrupted"]:
        n = len(result["cases"])
        kept = f"; the table above and {' and '.join(written)} hold them" if written else "; the table above holds them"
        print(f"gpubp bench: interrupted in case {result['interrupted']}: {n} case{'' if n == 1 else 's'} "
              f"finished{kept}" + (f"; {failed}" if failed else ""), file=sys.stderr)
        return _INTERRUPTS.status()
    if failed:
        raise GpubpError(failed)
    return 0


@contextmanager
def _blas_threads(n):
    """NumPy's BLAS on ``n`` threads inside (unchanged when None), as it was after."""
    from . import sysinfo

    if n is None:
        yield
        return
    before = sysinfo.set_blas_threads(n)
    if before is None:
        raise GpubpError(f"--threads: this NumPy's BLAS ({sysinfo.blas()['name']}) cannot be told its threads from "
                         f"here; set OPENBLAS_NUM_THREADS={n} (or OMP_NUM_THREADS) before running instead")
    try:
        yield
    finally:
        sysinfo.set_blas_threads(before)


def cmd_sweep(args) -> int:
    from . import sweeps

    _check_json_and_plot(args, "sweep")
    runs = sweeps.grid(sweeps.parse_seeds(args.seeds), etas=args.eta or [None], lmbdas=args.lmbda or [0.0],
                         sizes=args.sizes, cost=args.cost, activation=args.activation, optimizer=args.optimizer,
                         momentum=args.momentum, dtype=args.dtype, init=args.init, batch_size=args.batch_size,
                         epochs=args.epochs)
    data = _load_data(args, args.sizes, "--sizes")
    plan = sweeps.groups(runs, args.group_size)
    if args.ray:
        where = f"on Ray ({args.ray})"
    else:
        from .backends import get_backend

        be = get_backend(args.backend)
        where = f"on backend {be.name} ({be.device})"
    print(f"gpubp sweep: {len(runs)} runs in {len(plan)} group(s) of up to {max(map(len, plan))} models, {where}",
          file=sys.stderr, flush=True)
    piped = not args.quiet and not args.ray and not sys.stderr.isatty()  # no bar: a line now and then instead
    try:
        result = sweeps.sweep(runs, data=data, backend=args.backend, group_size=args.group_size, ray=args.ray,
                              threads=args.threads, progress=False if args.quiet else None,
                              monitor_training_cost=args.train_cost,
                              group_hook=_Heartbeat(len(plan), args.epochs) if piped else None)
    except sweeps.SweepInterrupted as e:  # Ctrl-C: the groups that finished are kept, and written
        result = e.result
    result = {**result, **provenance(args.argv)}  # the command line, where the API has none
    outputs = [("JSON", args.json, lambda p: write_json(p, result))]
    if result["runs"]:
        print(sweeps.table(result))
        print()
        print(sweeps.summary(result))
        outputs.append(("plot", args.plot, lambda p: sweeps.plot(result, p)))
    written, failed = _write_outputs(outputs, lambda m: print(m, file=sys.stderr))
    cut = result["interrupted"]
    if cut:
        kept = f"; the table above and {' and '.join(written)} hold them" if written else "; the table above holds them"
        print(f"gpubp sweep: interrupted: {cut['groups_finished']} of {cut['groups']} groups finished "
              f"({len(result['runs'])} runs){kept if result['runs'] else ''}" + (f"; {failed}" if failed else ""),
              file=sys.stderr)
        return 130
    if failed:
        raise GpubpError(failed)
    return 0


class _Heartbeat:
    """A sweep's progress as a line on stderr at most every HEARTBEAT_SECONDS, where no bar is drawn
    (stderr piped to a log): a long sweep is seen to be alive."""

    def __init__(self, groups, epochs):
        self.groups, self.epochs, self.every = groups, epochs, HEARTBEAT_SECONDS
        self.began = self.last = time.monotonic()

    def __call__(self, group, epoch):
        now = time.monotonic()
        if epoch and now - self.last >= self.every:
            self.last = now
            print(f"gpubp sweep: group {group + 1}/{self.groups} finished epoch {epoch}/{self.epochs}, "
                  f"{now - self.began:.0f} s so far", file=sys.stderr, flush=True)


def cmd_plot(args) -> int:
    from . import curves
    from .figures import image_format, pyplot

    _check_writable(args.out, "plot")
    image_format(args.out, "-o")
    pyplot("gpubp plot", "gpubp plot ...")  # fail before reading anything
    runs = [curves.load_run(p) for p in args.runs]
    names = curves.labels(runs, args.runs)
    _, failed = _write_outputs([("plot", args.out, lambda p: curves.save(curves.figure(runs, names), p))], print)
    if failed:
        raise GpubpError(failed)
    return 0


def cmd_samples(args) -> int:
    from .backends import get_backend
    from .data import load_mnist
    from .figures import pyplot, save

    _check_writable(args.out, "picture")
    pyplot("gpubp samples", "gpubp samples ...")  # fail before reading anything
    aug = augment_from_args(args, default="simard-elastic")
    if aug is None:
        raise GpubpError("these --augment settings distort nothing: name a preset or give a distortion")
    be = get_backend(args.backend)
    X = load_mnist(args.data_dir, verify=not args.no_verify)["train"][0][:args.count]
    fig = samples_figure(X, aug, args.seed, args.epochs, be, f"{aug.describe()} (seed {args.seed}, {be.name})")
    _, failed = _write_outputs([("picture", args.out, lambda p: save(fig, p))], print)
    if failed:
        raise GpubpError(failed)
    return 0


def cmd_info(args) -> int:
    from . import sysinfo
    from .backends import cupy_status, get_backend
    from .version import __version__

    m = sysinfo.machine()
    ok, why = cupy_status()
    lines = [f"gpubp {__version__}, Python {m['python']}"]
    try:
        be = get_backend(args.backend)
        lines.append(f"backend: {be.name} on {be.device} ({be.reason})")
        lines += _routes(be)
    except GpubpError as e:
        lines.append(f"backend: unavailable: {e}")
    lines += [f"GPU: {'yes, ' + why if ok else 'no: ' + why}",
              f"CPU: {m['cpu']}, {m['cores']} cores",
              f"NumPy {m['numpy']}, BLAS {m['blas']['name']} {m['blas']['version'] or ''} "
              f"({m['blas']['threads'] or '?'} threads)".replace("  ", " "),
              f"CuPy {m['cupy'] or 'not installed'}, CUDA runtime {m['cuda_runtime'] or '-'}, "
              f"driver {m['cuda_driver'] or '-'}"]
    print("\n".join(lines))
    return 0


def _check_route(be, args) -> None:
    """--gemm own without a kernel backend, or a --graph that cannot be captured: said before the data loads."""
    from .network import Network

    graph_mode(Network([2, 2], backend=be, gemm=args.gemm, dtype=args.dtype, tf32=args.tf32), args.graph)


def _routes(be) -> list[str]:
    """What `gpubp train` will do on ``be``: the products' route and whether an epoch is one graph."""
    from .network import Network

    lines = []
    for gemm in GEMM_ROUTES:
        try:
            graph, why = graph_mode(Network([2, 2], backend=be, gemm=gemm))
        except GpubpError as e:
            lines.append(f"--gemm {gemm}: cannot run here: {e}")
            continue
        default = " (the default)" if gemm == be.preferred_gemm else ""
        lines.append(f"--gemm {gemm}{default}: " + (f"each epoch is one graph ({why})" if graph else why))
    return lines


def main(argv=None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    args, extra = parser.parse_known_args(argv)
    args.argv = ["gpubp", *argv]
    if extra:  # the subcommand's parser says it, so the hint is "gpubp train --help"
        _subparser(parser, args.command).error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        with _INTERRUPTS.installed():
            return args.func(args)
    except GpubpError as e:
        print(f"gpubp {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gpubp {args.command}: interrupted", file=sys.stderr)
        return _INTERRUPTS.status()


def _subparser(parser, command):
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[command]


if __name__ == "__main__":
    sys.exit(main())
