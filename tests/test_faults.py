"""Faults of runs at scale, through the `mbtasks` script: two runs into one folder, SIGTERM and SIGINT (what
schedulers, `docker stop` and Ctrl+C send), and training that diverges."""

import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from helpers import CALLBACK_ADDED, MBTASKS, TINY_IMAGE_DATA, WITH_CALLBACK
from test_training import _assert_the_same_run

from mbtasks.cli import main
from mbtasks.errors import MbtasksError
from mbtasks.io.records import non_finite_tensors
from mbtasks.io.run_lock import run_lock
from mbtasks.tasks.trainer import AtomicCheckpointIO

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}

# The tiny classifier of test_training (12 training images in batches of 4: 3 steps an epoch), without its
# validation's cost where a test needs none.
TINY_CLS = [
    "model.name=mobilenet_v3_small",
    "model.options={width_mult: 0.35}",
    "data.augmentation=light",
    "data.batch_size=4",
    "data.val_batch_size=9",
    "train.accelerator=cpu",
    "train.progress_bar=false",
    "train.log_every=1",
    "train.optimizer=sgd",
    "train.lr=0.05",
    "train.warmup_epochs=0.5",
    "train.epochs=2",
    "data.num_workers=1",
    *TINY_IMAGE_DATA["cls"],
]

# `mbtasks` that sends itself a signal (env SIGNAL) after the training step SIGNAL_AT_STEP, having waited there for
# the file WAIT_FOR to appear when that is set (and said so with WAIT_FOR.waiting).
SIGNALLED = """
import os, signal, sys, time
from pytorch_lightning.callbacks import Callback

class Send(Callback):
    def on_train_batch_end(self, trainer, module, outputs, batch, index):
        if trainer.global_step == int(os.environ["SIGNAL_AT_STEP"]):
            if os.environ.get("WAIT_FOR"):
                open(os.environ["WAIT_FOR"] + ".waiting", "w").close()
            while os.environ.get("WAIT_FOR") and not os.path.exists(os.environ["WAIT_FOR"]):
                time.sleep(0.1)
            os.kill(os.getpid(), getattr(signal, os.environ["SIGNAL"]))

CALLBACK = Send""" + WITH_CALLBACK.replace("ARGS_FROM", "1")


def _train_args(*settings: str) -> list[str]:
    return ["train", "--task", "cls", *[a for s in [*TINY_CLS, *settings] for a in ("--set", s)]]


def _one_line(stderr: str) -> str:
    lines = [line for line in stderr.strip().splitlines() if line.startswith("mbtasks: ")]
    assert len(lines) == 1, stderr[-3000:]
    return lines[0]


def _train_here(*args: str) -> int:
    """`mbtasks train` in this process, torch on one thread as in the signalled runs (the same sums)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return main(_train_args(*args[:-1]) + ([] if args[-1] is None else ["--resume", args[-1]]))
    finally:
        torch.set_num_threads(threads)


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def test_two_runs_into_one_folder_and_a_run_stopped_by_sigterm_or_sigint_then_resumed(tmp_path, capsys):
    """A second run into a folder another run trains into is refused in one line and writes nothing there; SIGTERM
    and SIGINT in mid-epoch stop a run with one line naming its checkpoint, from which --resume ends with the
    uninterrupted run's weights within 1e-6."""
    data = f"data.synth_dir={tmp_path / 'data'}"
    assert _train_here(data, f"train.out_dir={tmp_path / 'straight'}", None) == 0

    for name, signum, step in (("SIGTERM", signal.SIGTERM, 4), ("SIGINT", signal.SIGINT, 2)):
        out = tmp_path / name
        go = tmp_path / f"{name}.go"
        env = {**ENV, "SIGNAL": name, "SIGNAL_AT_STEP": str(step), "WAIT_FOR": str(go)}
        first = subprocess.Popen(
            [sys.executable, "-c", SIGNALLED, *_train_args(data, f"train.out_dir={out}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        if signum == signal.SIGTERM:
            # The first run waits at its step for `go`: meanwhile a second run into its folder is refused.
            while first.poll() is None and not Path(f"{go}.waiting").exists():
                time.sleep(0.2)
            capsys.readouterr()
            before = _files(out)
            assert _train_here(data, f"train.out_dir={out}", "train.seed=7", None) == 2
            line = _one_line(capsys.readouterr().err)
            assert line == (
                f"mbtasks: error: {out}: another run (pid {first.pid} on {socket.gethostname()}) is writing into "
                "this folder: wait for it to end, or set train.out_dir to another folder"
            )
            assert _files(out) == before
        go.touch()
        _, stderr = first.communicate(timeout=600)
        assert first.returncode == 128 + signum, stderr[-3000:]
        last = out / "checkpoints" / "last.ckpt"
        assert _one_line(stderr) == (
            f"mbtasks: stopped by {name} after step {step} (epoch {step // 3}); saved {last}: continue the run with "
            f"--resume {last}"
        )
        assert not (out / ".lock").exists() and not list(out.rglob("*.partial*"))
        assert torch.load(last, weights_only=True)["global_step"] == step
        assert _train_here(data, f"train.out_dir={out}", str(last)) == 0
        _assert_the_same_run(tmp_path / "straight", out, steps=6)


def test_a_lock_left_by_a_dead_process_is_taken_over_and_a_held_one_refused(tmp_path, capsys):
    (tmp_path / ".lock").write_text("elsewhere 4242\n")  # a run killed with SIGKILL leaves its file, unheld
    with run_lock(tmp_path) as lock:
        assert capsys.readouterr().err == (
            f"mbtasks: warning: {lock}: took over the lock of pid 4242 on elsewhere, which ended without releasing it\n"
        )
        assert lock.read_text().split()[1] == str(os.getpid())
        with pytest.raises(MbtasksError, match=f"another run \\(pid {os.getpid()} on .*\\) is writing into"):
            with run_lock(tmp_path):
                pass
        assert lock.exists()
    assert not lock.exists()


# `mbtasks` (argv[2:]) made slow and watchable: touching the file argv[1] and pausing after each batch that predict
# writes or that evaluate validates.
SLOWED = """
import sys, time
from pytorch_lightning.callbacks import Callback
import mbtasks.predict.runner as runner

def pause():
    open(sys.argv[1], "a").close()
    time.sleep(0.3)

write = runner.PhotoWriter.write_on_batch_end
def write_slowly(*args, **kwargs):
    write(*args, **kwargs)
    pause()
runner.PhotoWriter.write_on_batch_end = write_slowly

class Slow(Callback):
    def on_validation_batch_end(self, *args, **kwargs):
        pause()

CALLBACK = Slow""" + WITH_CALLBACK.replace("ARGS_FROM", "2")


def _children(pid: int) -> set[int]:
    """The processes whose parent is `pid`, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(stat.parent.name))
    return found


def _alive(pids: set[int]) -> set[int]:
    """Those of `pids` still running (a zombie has ended: it waits only for its parent to read its status)."""
    alive = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            alive.add(pid)
    return alive


def _stopped_midway(tmp_path: Path, name: str, signum: int, command: list[str]) -> tuple[int, str, set[int]]:
    """Run `command` slowed, send it `signum` once it has done its first batch; (exit status, stderr, the loader
    workers it had, those of them alive 10 s after it ended)."""
    started, stderr = tmp_path / f"{name}.started", tmp_path / f"{name}.stderr"
    with stderr.open("w") as errors:  # a file, not a pipe: an orphaned worker would hold a pipe open
        run = subprocess.Popen([sys.executable, "-c", SLOWED, str(started), *command], stderr=errors, env=ENV)
    while run.poll() is None and not started.exists():
        time.sleep(0.1)
    workers = _children(run.pid)
    run.send_signal(signum)
    run.wait(timeout=120)
    deadline = time.monotonic() + 10
    while _alive(workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    return run.returncode, stderr.read_text(), workers


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the process tree from /proc")
def test_predict_and_evaluate_stop_at_once_on_sigterm_and_leave_no_process(demo_segmenter, tmp_path):
    """SIGTERM: one line, exit 143, no temporary file, the earlier --json whole; SIGTERM or SIGKILL: no loader worker
    outlives its command (torch's worker, its parent gone, would wait forever to hand over its queued batches)."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for index in range(24):
        cv2.imwrite(str(photos / f"{index}.png"), np.full((64, 128, 3), index * 10, np.uint8))
    predict = ["predict", "--checkpoint", demo_segmenter, str(photos), "--batch-size", "1", "--workers", "2"]

    code, stderr, workers = _stopped_midway(tmp_path, "term", signal.SIGTERM, [*predict, "--out", str(tmp_path / "a")])
    assert code == 128 + signal.SIGTERM and _one_line(stderr) == "mbtasks: stopped by SIGTERM", stderr[-3000:]
    assert len(workers) == 2 and not _alive(workers)
    assert not [p for p in (tmp_path / "a").rglob("*") if p.name.startswith(".")]
    assert not (tmp_path / "a" / "predictions.json").exists()

    code, stderr, workers = _stopped_midway(tmp_path, "kill", signal.SIGKILL, [*predict, "--out", str(tmp_path / "b")])
    assert code == -signal.SIGKILL and len(workers) == 2 and not _alive(workers)

    earlier = tmp_path / "figures.json"
    earlier.write_text('{"mIoU": 0.5}')
    evaluate = ["evaluate", "--checkpoint", demo_segmenter, "--json", str(earlier), "--overwrite"]
    code, stderr, workers = _stopped_midway(
        tmp_path, "eval", signal.SIGTERM, [*evaluate, "--set", "data.num_workers=2", "--set", "data.val_batch_size=1"]
    )
    assert code == 128 + signal.SIGTERM and _one_line(stderr) == "mbtasks: stopped by SIGTERM", stderr[-3000:]
    assert len(workers) == 2 and not _alive(workers)
    assert earlier.read_text() == '{"mIoU": 0.5}' and [p.name for p in tmp_path.glob("*.json")] == ["figures.json"]


def test_a_diverging_run_stops_at_its_step_and_checkpoints_that_are_not_finite_are_refused(tmp_path, capsys):
    """train.lr=1000 turns the loss NaN at step 4: the run stops there in one line naming the last good checkpoint
    (which evaluates), and writes no checkpoint of that step; a loss past train.max_loss stops it the same way (here
    in the first epoch, before any checkpoint);
    evaluate, export, predict and --resume refuse a checkpoint whose weights are not finite."""
    data, out = f"data.synth_dir={tmp_path / 'data'}", tmp_path / "nan"
    diverged = subprocess.run(
        [MBTASKS, *_train_args(data, f"train.out_dir={out}", "train.lr=1000", "data.num_workers=0")],
        capture_output=True,
        text=True,
        timeout=600,
        env=ENV,
    )
    last = out / "checkpoints" / "last.ckpt"
    assert diverged.returncode == 2, diverged.stderr[-3000:]
    assert _one_line(diverged.stderr) == (
        f"mbtasks: error: training diverged at step 4 (epoch 1): the loss is nan; the last good checkpoint is {last} "
        "(after step 3): lower train.lr (or set train.gradient_clip) and resume from it, or start afresh"
    )
    for checkpoint in out.rglob("*.ckpt"):
        assert not non_finite_tensors(torch.load(checkpoint, weights_only=True)["state_dict"]), checkpoint
    assert torch.load(last, weights_only=True)["global_step"] == 3 and not (out / ".lock").exists()
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(last)]) == 0, capsys.readouterr().err

    exploding = [data, f"train.out_dir={tmp_path / 'exploding'}", "train.lr=1000", "train.max_loss=100"]
    assert _train_here(*exploding, "data.num_workers=0", None) == 2
    assert re.fullmatch(
        r"mbtasks: error: training diverged at step 3 \(epoch 0\): the loss [0-9.e+]+ is above train.max_loss=100; "
        r"no checkpoint was written before it: lower train.lr \(or set train.gradient_clip\) and start afresh",
        _one_line(capsys.readouterr().err),
    )

    state = torch.load(last, weights_only=True)
    name = next(iter(state["state_dict"]))
    state["state_dict"][name][0] = float("nan")
    broken = tmp_path / "broken.ckpt"
    torch.save(state, broken)
    photo = tmp_path / "photo.png"
    cv2.imwrite(str(photo), np.zeros((32, 32, 3), np.uint8))
    commands = [
        ["evaluate", "--checkpoint", str(broken)],
        ["export", "--checkpoint", str(broken), "--out", str(tmp_path / "model.onnx")],
        ["predict", "--checkpoint", str(broken), str(photo), "--out", str(tmp_path / "predictions")],
        _train_args(data, f"train.out_dir={out}") + ["--resume", str(broken)],
    ]
    for command in commands:
        assert main(command) == 2, command
        assert _one_line(capsys.readouterr().err) == (
            f"mbtasks: error: {broken}: holds weights that are not finite (NaN or inf) in 1 tensors, first {name}: "
            "the run that wrote it had diverged; use an earlier checkpoint of it"
        )
    assert not (tmp_path / "model.onnx").exists() and not (tmp_path / "predictions").exists()

    with pytest.raises(MbtasksError, match="not written: 1 tensors of the weights are not finite"):
        AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.tensor([float("inf")])}}, tmp_path / "w.ckpt")
    assert not list(tmp_path.glob("*w.*ckpt*"))


# Runs `mbtasks` commands in one process (each case's exit status and stderr printed as JSON), in a mount namespace
# where argv[1]/full is a 1 MiB tmpfs and argv[1]/ro a read-only one (what it wrote there is gone once it ends, so
# it lists those folders itself). Cases (argv[2], JSON): [name, arguments] in order; "fill" fills the small disk.
# During the case "signalled", SIGTERM arrives at the first validation batch of the first epoch.
FAULTS = (
    """
import contextlib, io, json, os, resource, signal, sys
from pytorch_lightning.callbacks import Callback

class TermInValidation(Callback):
    def on_validation_batch_end(self, trainer, *args):
        if os.environ.get("SIGNAL_IN_VALIDATION") and not trainer.sanity_checking and trainer.current_epoch == 0:
            os.environ.pop("SIGNAL_IN_VALIDATION")
            os.kill(os.getpid(), signal.SIGTERM)

CALLBACK = TermInValidation"""
    + CALLBACK_ADDED
    + """
root = sys.argv[1]
results = {}
for name, arguments in json.loads(sys.argv[2]):
    if name == "fill":
        with open(os.path.join(root, "full", "filler"), "wb", buffering=0) as filler, contextlib.suppress(OSError):
            while True:
                filler.write(bytes(4096))
        continue
    if name == "signalled":
        os.environ["SIGNAL_IN_VALIDATION"] = "1"
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        code = main(arguments)
    # with this process's peak memory so far, and its loader workers' (KiB)
    results[name] = [code, errors.getvalue(), [resource.getrusage(who).ru_maxrss for who in (0, -1)]]
results["files"] = sorted(
    os.path.relpath(os.path.join(folder, file), root)
    for place in ("full", "ro") for folder, _, files in os.walk(os.path.join(root, place)) for file in files
)
print(json.dumps(results))
"""
)


def _png_bomb(path: Path, side: int = 20000) -> None:
    """A grey PNG of side x side pixels, all zero: a couple of MB that decode to side**2 bytes (3x that as RGB)."""
    compressor, rows = zlib.compressobj(1), bytes(side + 1) * 1000  # each row: its filter byte and its pixels
    data = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", data) + chunk(b"IEND", b""))


def _in_a_small_and_a_read_only_place(tmp_path: Path, cases: list) -> dict:
    """FAULTS run under `unshare` (a user and mount namespace: no privilege needed where the kernel allows them)."""
    for place in ("full", "ro"):
        (tmp_path / place).mkdir()
    mounts = (
        f"mount -t tmpfs -o size=1m tmpfs {tmp_path}/full && mount -t tmpfs tmpfs {tmp_path}/ro && "
        f"echo '{{\"mIoU\": 0.5}}' > {tmp_path}/ro/earlier.json && mount -o remount,ro {tmp_path}/ro && "
        'exec "$@"'
    )
    run = subprocess.run(
        ["unshare", "-rm", "sh", "-c", mounts, "sh", sys.executable, "-c", FAULTS, str(tmp_path), json.dumps(cases)],
        capture_output=True,
        timeout=600,
        env=ENV,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.decode().strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mounts a tmpfs in a Linux mount namespace")
def test_full_disks_read_only_places_a_bomb_a_signal_in_validation_and_a_name_that_is_not_utf8(
    demo_segmenter, tmp_path
):
    """On a full disk (a 1 MiB tmpfs) train, evaluate --json, export and predict stop with one line, exit 2, leave no
    temporary file, and earlier files whole; so do predict and evaluate into a read-only place. A 20000x20000 PNG bomb
    is refused from its header, the process's peak memory under 1 GB. SIGTERM during validation lets it end: best.ckpt
    holds that epoch. predict reads and writes a photo whose name is not UTF-8 (OpenCV's PNG writer crashed on it)."""
    data, full, ro = f"data.synth_dir={tmp_path / 'data'}", tmp_path / "full", tmp_path / "ro"
    photos = tmp_path / "photos"
    photos.mkdir()
    _png_bomb(photos / "bomb.png")
    latin1 = os.fsdecode(bytes(photos) + b"/caf\xe9.jpg")  # a Linux name of Latin-1 bytes
    cv2.imencode(".jpg", np.full((48, 64, 3), 90, np.uint8))[1].tofile(latin1)
    predict = ["predict", "--checkpoint", demo_segmenter, "--workers", "1"]
    signalled = tmp_path / "signalled"
    cases = [
        ["latin1", [*predict, latin1, "--out", str(tmp_path / "latin1")]],
        ["bomb", [*predict, str(photos / "bomb.png"), "--out", str(tmp_path / "bomb"), "--strict"]],
        ["signalled", _train_args(data, f"train.out_dir={signalled}", "data.val_batch_size=2")],
        ["train", _train_args(data, f"train.out_dir={full / 'run'}", "train.epochs=1")],
        ["fill", []],
        ["evaluate", ["evaluate", "--checkpoint", demo_segmenter, "--json", str(full / "m.json")]],
        ["export", ["export", "--checkpoint", demo_segmenter, "--out", str(full / "m.onnx")]],
        ["predict", [*predict, latin1, "--out", str(full / "p")]],
        ["predict_ro", [*predict, latin1, "--out", str(ro / "p")]],
        [
            "evaluate_ro",
            ["evaluate", "--checkpoint", demo_segmenter, "--json", str(ro / "earlier.json"), "--overwrite"],
        ],
    ]
    results = _in_a_small_and_a_read_only_place(tmp_path, cases)

    code, stderr, peaks = results["bomb"]
    assert code == 2 and _one_line(stderr) == (
        f"mbtasks: error: {photos / 'bomb.png'}: image of 20000x20000 pixels (400 megapixels) is over the limit of "
        "100000000 pixels: shrink it, or raise the limit (data.max_pixels, predict --max-pixels)"
    )
    # Decoded, it would take 1.2 GB as RGB. The process starts at about 0.8 GB here (torch's and Lightning's imports
    # alone), so the bound is on what the bomb adds to the peak of the same predict of a small photo: under 100 MB,
    # in the process and in its loader worker.
    assert all(peak - before < 100_000 for peak, before in zip(peaks, results["latin1"][2], strict=True)), (
        peaks,
        results["latin1"][2],
    )

    code, stderr, _ = results["latin1"]
    assert code == 0, stderr[-3000:]
    pictures = [p for p in (tmp_path / "latin1").rglob("*") if p.suffix in (".png", ".jpg")]
    assert len(pictures) >= 2 and all(os.fsencode(p.name).startswith(b"caf\xe9.") for p in pictures), pictures

    code, stderr, _ = results["signalled"]
    best = next((signalled / "checkpoints").glob("best*.ckpt"))
    assert code == 128 + signal.SIGTERM and _one_line(stderr).startswith("mbtasks: stopped by SIGTERM after step 3")
    assert torch.load(best, weights_only=True)["epoch"] == 0

    for name, place, reason in (
        ("train", full / "run" / "checkpoints", "No space left on device"),
        ("evaluate", full / "m.json", "No space left on device"),
        ("export", full / "m.onnx", "No space left on device"),
        ("predict", full / "p", "No space left on device"),
        ("predict_ro", ro / "p", "Read-only file system"),
        ("evaluate_ro", ro, "not writable"),
    ):
        code, stderr, _ = results[name]
        assert code == 2 and str(place) in _one_line(stderr) and reason in _one_line(stderr), (name, stderr[-3000:])
    assert not [name for name in results["files"] if "partial" in name or name.startswith("full/.")]
    assert "ro/earlier.json" in results["files"] and "full/run/.lock" not in results["files"]
