"""The one entry point: `mbtasks COMMAND ...`."""

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

from .errors import MbtasksError, missing_package
from .interruption import Interrupted, stop_on_signals


class _Parser(argparse.ArgumentParser):
    """argparse with its mistakes on one line, as every other user mistake (its default prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"mbtasks: error: {message} (see `{self.prog} --help`)\n")


def _resolution(text: str) -> int | tuple[int, int]:
    """'224' -> 224, '320x512' -> (320, 512) (height x width): positive integers."""
    try:
        size = tuple(int(v) for v in text.lower().split("x"))
    except ValueError:
        size = ()
    if len(size) not in (1, 2) or min(size) <= 0:
        raise argparse.ArgumentTypeError(f"resolution must be N or HxW (positive integers), got {text!r}")
    return size[0] if len(size) == 1 else size


def at_least(low: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `low`."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = low - 1
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer of at least {low}, got {text!r}")
        return value

    return parse


def _fraction(text: str) -> float:
    """An argparse type: a number from 0 to 1."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1, got {text!r}")
    return value


def _scales(text: str) -> list[float]:
    """'0.75,1.0,1.25' -> [0.75, 1.0, 1.25]: positive numbers."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if not values or not all(v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"must be positive numbers separated by commas, got {text!r}")
    return values


def cmd_profile(args: argparse.Namespace) -> None:
    from .models import MODELS, build_model
    from .profiling import example_input, profile
    from .reference import DETECTOR_PAPER_NOTES, reference_rows

    if args.model is None:
        print(f"{'model':<30}{'options':<56}{'input':>10}{'params':>12}{'paper':>8}{'MAdds':>10}{'paper':>8}{'ms':>9}")
        for name, options, res, paper_params, paper_madds in reference_rows():
            figures = profile(build_model(name, **options), example_input(res), args.runs)
            shown = ", ".join(f"{k}={v}" for k, v in options.items() if k not in ("size",))
            size = res if isinstance(res, int) else f"{res[0]}x{res[1]}"
            print(
                f"{name:<30}{shown:<56}{size:>10}{figures['params'] / 1e6:>11.2f}M{paper_params / 1e6:>7.2f}M"
                f"{figures['madds'] / 1e9:>9.3f}G{paper_madds / 1e9:>7.2f}G{figures['latency_ms']:>9.1f}"
            )
        for (name, width, res), note in DETECTOR_PAPER_NOTES.items():
            print(f"note: {name} (width {width:g}) at {res}: {note}")
        return
    options = dict(args.option or [])
    if args.width is not None:
        options["width_mult"] = args.width
    resolution, entry = args.resolution, MODELS.get(args.model)
    if entry.kind == "detector" and resolution is not None:
        options.setdefault("size", resolution)  # a detector resizes its input to its own size
    resolution = resolution or options.get("size") or entry.size
    model = build_model(args.model, **options)
    figures = profile(model, example_input(resolution), args.runs)
    if args.json:
        print(json.dumps(figures))
    else:
        print(
            f"{args.model}: {figures['params']:,} parameters, {figures['madds'] / 1e6:.1f}M multiply-adds, "
            f"{figures['latency_ms']:.2f} ms at batch 1"
        )


def _option(text: str) -> tuple[str, object]:
    """'key=value' with the value read as YAML (numbers, booleans, lists)."""
    import yaml

    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    key, value = text.split("=", 1)
    return key, yaml.safe_load(value)


def cmd_weights_import(args: argparse.Namespace) -> None:
    from .io.outputs import output_file
    from .models.pretrained import save_imported

    output_file(args.out, args.overwrite)

    saved = save_imported(args.src, args.out, args.source, args.model)
    source = args.source or args.src.split(":")[0]
    print(f"wrote {args.out}: {saved.model} ({len(saved.state_dict)} tensors from {source}, options {saved.options})")


def _config(
    args: argparse.Namespace, base: dict | None = None, recipes: list[str] | None = None, check_task: bool = True
):
    """The typed recipe of --config (or `recipes`; several merged in order) over `base`, --set on top; its task
    checked against the registered ones unless `check_task` is false."""
    from .config import load_config

    config = load_config(recipes or args.config, args.set or [], task=args.task, base=base)
    if check_task:
        from .tasks import TASKS  # after the config's own checks: importing the tasks takes seconds

        TASKS.get(config.task)  # an unknown task is one line naming the closest
    return config


def _print_config(args: argparse.Namespace, recipes: list[str] | None = None) -> None:
    """--print-config: the recipe the command would run, resolved (bases, every --config, --set), as YAML that
    `--config FILE` reads back to the same config; a --checkpoint's own recipe where no --config is given."""
    from .config import config_yaml

    if getattr(args, "checkpoint", None) is not None:
        from .io.records import read_checkpoint

        config = _config_of_record(args, read_checkpoint(args.checkpoint, args.task))
    else:
        config = _config(args, recipes=recipes, check_task=False)  # a recipe read, nothing built: no tasks' imports
    print(config_yaml(config), end="")


def cmd_recipes(args: argparse.Namespace) -> None:
    from dataclasses import asdict

    from .recipe_files import recipe_listing

    entries = [entry for entry in recipe_listing() if args.task in (None, entry.task)]
    if args.json:
        print(json.dumps([asdict(entry) for entry in entries], indent=1))
        return
    rows = [("name", "task", "model", "data", "description")] + [
        (
            entry.name + (" (base)" if entry.is_base else ""),
            entry.task,
            entry.model or "-",
            (entry.data_root or "embedded") + (f" ({entry.data_format})" if entry.data_format else ""),
            entry.description,
        )
        for entry in entries
    ]
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[4])


def cmd_train(args: argparse.Namespace) -> None:
    if args.print_config:
        return _print_config(args)
    config = _config(args)
    if args.launcher is not None:
        return _submit_training(args, config)
    _quiet_libraries()
    from .io.records import check_same_network, read_resumable
    from .tasks.build import build_task_and_data
    from .tasks.trainer import (
        build_trainer,
        check_train_settings,
        claim_out_dir,
        fit,
        out_dir_lock,
        requeued_checkpoint,
    )

    check_train_settings(config.train)
    resume = args.resume
    if requeued := requeued_checkpoint(config.train.out_dir):
        print(f"resuming the requeued SLURM job from {requeued}")
        resume = str(requeued)  # where the job stopped, past the --resume it was first started with
    if resume is not None:
        resumed = read_resumable(resume, config.task)  # a missing or foreign file: one error before anything
    task, data = build_task_and_data(config)
    if resume is not None:
        check_same_network(resumed, task.model_name, task.model, resume)
    # After the data and the model were built: a mistake in either leaves no output folder behind.
    with out_dir_lock(config.train.out_dir):  # held until the run ends, however it ends
        claim_out_dir(config.train.out_dir, resume=resume is not None, overwrite=args.overwrite)
        trainer = build_trainer(config, task.monitor)
        fit(trainer, task, data, resume)
        _report_training(trainer, task, config)


def _submit_training(args: argparse.Namespace, config) -> None:
    """train --launcher: the same command submitted as a job (submitit), its id and log folder printed."""
    from .launch import JobResources, submit_command, wait_for

    argv = ["train", *(a for recipe in args.config or [] for a in ("--config", recipe))]
    argv += ["--task", config.task, *(a for setting in args.set or [] for a in ("--set", setting))]
    argv += (["--resume", args.resume] if args.resume else []) + (["--overwrite"] if args.overwrite else [])
    folder = Path(config.train.out_dir).resolve() / "jobs"
    resources = JobResources.of_recipe(config, args.time)
    job = submit_command(main, argv, args.launcher, folder, resources, _scheduler_options(args))
    print(f"submitted {args.launcher} job {job.job_id}: logs in {job.paths.stdout.parent}")
    if args.wait:
        sys.stdout.flush()
        if failure := wait_for(job):
            raise MbtasksError(f"job {job.job_id} failed: {failure} (logs in {job.paths.stdout.parent})")
        print(f"job {job.job_id} finished: {Path(config.train.out_dir) / 'checkpoints' / 'last.ckpt'}")


def _scheduler_options(args: argparse.Namespace):
    from .launch import SchedulerOptions

    return SchedulerOptions(args.partition, args.account, args.qos, args.constraint)


def _report_training(trainer, task, config) -> None:
    """The best and the last checkpoint, as the recipe gives train.out_dir."""
    if trainer.is_global_zero:
        # Paths as the recipe gives train.out_dir (Lightning keeps the best one's as a whole path).
        checkpoints = Path(config.train.out_dir) / "checkpoints"
        name = Path(trainer.checkpoint_callback.best_model_path).name  # empty where no validation ran
        best = checkpoints / name if name else ""
        score = float(trainer.checkpoint_callback.best_model_score or 0)
        scored = "" if task.validated_whole_set else f" on {task.coverage_note()}{_limited(task, config)}"
        print(f"best {task.monitor} {score:.4f}{scored}: {best}")
        print(f"last: {checkpoints / 'last.ckpt'}")


def _limited(task, config) -> str:
    """ " (train.limit_val_batches=1)" where the last validation scored part of the set."""
    return "" if task.validated_whole_set else f" (train.limit_val_batches={config.train.limit_val_batches})"


# Evaluation scores the whole set: the limits a recipe trained with do not apply (a --set given to evaluate does).
WHOLE_SET = ["train.limit_train_batches=null", "train.limit_val_batches=null"]


def cmd_evaluate(args: argparse.Namespace) -> None:
    if args.print_config:
        return _print_config(args)
    from .io.outputs import output_file, output_folder

    if args.json:
        output_file(args.json, args.overwrite)  # a bad output path is told before the work, not after it
    if args.save_predictions:
        output_folder(args.save_predictions)
    if args.report:
        output_file(Path(args.report) / "index.html", args.overwrite)
    if args.coco_backend is not None:
        from .evaluation.coco import check_backend

        check_backend(args.coco_backend)  # before a model runs
    if args.task is not None and _evaluate_files(args):
        return
    from .io.records import read_checkpoint

    onnx_model, source = None, args.checkpoint
    if args.runtime in ("onnxruntime", "executorch"):
        from .tasks.runtime import load_executorch_model, load_onnx_model

        suffix = ".onnx" if args.runtime == "onnxruntime" else ".pte"
        if args.model is None or args.checkpoint is not None:
            raise MbtasksError(
                f"--runtime {args.runtime} evaluates --model FILE{suffix} (from `mbtasks export`), not a --checkpoint"
            )
        load = load_onnx_model if args.runtime == "onnxruntime" else load_executorch_model
        onnx_model, record = load(args.model, args.task)
        source = args.model
    elif args.model is not None:
        raise MbtasksError(
            "--model is an exported file for --runtime onnxruntime or executorch; the torch runtime takes --checkpoint"
        )
    elif args.checkpoint is None:
        return _evaluate_weights(args)
    else:
        record = read_checkpoint(args.checkpoint, args.task)
    config, data, task = _task_of_record(args, record, source)
    _quiet_libraries()
    from .layers.fusion import for_inference

    data.prepare_data()
    data.setup("validate")
    if list(data.class_names) != list(record.class_names):
        raise MbtasksError(
            f"was trained on classes {record.class_names[1:4]}..., the data set has {list(data.class_names)[1:4]}...",
            source,
        )
    # the same evaluators, the checkpoint's network (its inference copy) or the exported graph in ONNX Runtime
    task.model = for_inference(task.model) if onnx_model is None else onnx_model
    _validate(args, config, data, task)


def _evaluate_weights(args: argparse.Namespace) -> None:
    """No checkpoint: the configured model with its whole-model weights (a file, or pretrained weights by name), in
    the classes the weights answer in (torchvision's COCO detectors: COCO category ids)."""
    from .layers.fusion import for_inference
    from .models.pretrained import load_weights
    from .tasks.build import build_task_and_data

    whole_set = argparse.Namespace(**{**vars(args), "set": WHOLE_SET + (args.set or [])})
    config = _config(whole_set) if args.task or args.config else None
    if config is None or not config.model.weights:
        raise MbtasksError(
            "evaluate needs --checkpoint, or model.weights (a weights file, or weights by name such as "
            "torchvision:SSDLite320_MobileNet_V3_Large_Weights.COCO_V1) with --task or --config; "
            "or --runtime onnxruntime --model FILE.onnx; or, for det, --annotations with --detections"
        )
    weights = load_weights(config.model.weights)
    config.model.name = config.model.name or weights.model
    task, data = build_task_and_data(config, "validate")
    task.model = for_inference(task.model)
    _validate(args, config, data, task)


def _validate(args: argparse.Namespace, config, data, task) -> None:
    """Run the task's validation with the evaluate options and print (and --json) its figures."""
    from .tasks.trainer import build_trainer

    if args.save_predictions and not args.overwrite:
        folder = Path(args.save_predictions)
        if earlier := task.earlier_predictions(folder):
            raise MbtasksError(
                f"holds {len(earlier)} files where this run writes its predictions (first: "
                f"{earlier[0].relative_to(folder)}): pass --overwrite to replace them, or choose "
                "another --save-predictions folder",
                folder,
            )
    task.evaluation_options = {
        "save_predictions": args.save_predictions,
        "scales": args.scales,
        "flip": args.flip,
        "coco_backend": args.coco_backend,
    }
    trainer = build_trainer(config, "", for_fit=False)
    trainer.validate(task, datamodule=data, verbose=False)
    if trainer.is_global_zero:
        print(f"evaluated {task.coverage_note()}{_limited(task, config)}")
        _print_metrics(args, task.metrics, task.metrics_table())
        if args.report:
            print(f"wrote {task.write_report(data, Path(args.report), args.report_worst)}")


def _config_of_record(args: argparse.Namespace, record):
    """The config to evaluate or export a checkpoint's or an exported model's record with: its own recipe unless
    --config is given, on the machine at hand (one device of the accelerator there; a recipe's 8 GPUs are the
    training machine's), the whole evaluation set (WHOLE_SET), --set on top."""
    at_hand = ["train.accelerator=auto", "train.devices=1", "train.strategy=auto", "train.num_nodes=1", *WHOLE_SET]
    args = argparse.Namespace(**{**vars(args), "set": at_hand + (args.set or [])})
    return _config(args, base=record.config if args.config is None else None)


def _task_of_record(args: argparse.Namespace, record, source):
    """(config, data module, task module) for a record (_config_of_record); the network is always the record's,
    with its weights (from_record)."""
    config = _config_of_record(args, record)
    from .tasks import TASKS  # after the config's checks, as in _config

    spec = TASKS.get(config.task)
    task = spec.from_record(record, config, source)
    return task.config, spec.data_module(task.config), task


def _print_metrics(args: argparse.Namespace, metrics: dict, table: str) -> None:
    from .io.outputs import write_text_atomically

    if args.json:  # first: the file is kept even when the reader of the table goes away (`| head`)
        write_text_atomically(args.json, json.dumps(_json_safe(metrics), indent=2))
    print(table)


def _json_safe(value):
    """NaN (a class never seen) becomes null: JSON has no NaN."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return None if isinstance(value, float) and value != value else value


def _evaluate_files(args: argparse.Namespace) -> bool:
    """Saved predictions scored without a model, where the task takes the file options given: whether it did."""
    from .tasks import TASKS

    scored = TASKS.get(args.task).score_files(vars(args))
    if scored is None:
        return False
    metrics, table, images = scored
    if images is not None:
        print(f"evaluated {images} images")
    _print_metrics(args, metrics, table)
    if args.report:
        report = TASKS.get(args.task).write_files_report(
            vars(args), metrics, table, Path(args.report), args.report_worst
        )
        print(f"wrote {report}")
    return True


def cmd_predict(args: argparse.Namespace) -> None:
    from .io.images import max_pixels, set_max_pixels
    from .predict import predict

    _quiet_libraries()
    given = {
        "score_threshold": args.score_threshold,
        "keep_threshold": args.keep_threshold,
        "scales": args.scales,
        "flip": args.flip or None,
        "threshold": args.threshold,
        "pairs": args.pairs,
    }
    before = max_pixels()
    set_max_pixels(args.max_pixels)  # for this command only: a program calling main() keeps its own limit
    try:
        for line in predict(
            args.checkpoint,
            args.inputs,
            args.out,
            task=args.task,
            options={k: v for k, v in given.items() if v is not None},
            batch_size=args.batch_size,
            workers=args.workers,
            device=args.device,
            strict=args.strict,
            overwrite=args.overwrite,
            picture_format=args.picture_format,
        ):
            print(line)
    finally:
        set_max_pixels(before)


def cmd_export(args: argparse.Namespace) -> None:
    if args.print_config:
        return _print_config(args)
    from .io.outputs import output_file
    from .io.records import read_checkpoint

    output_file(args.out, args.overwrite)
    record = read_checkpoint(args.checkpoint, args.task)  # the files are checked before the heavy imports
    if args.format == "executorch":
        from .export.executorch import executorch_modules

        executorch_modules()  # not installed: one line naming the extra, before the data is read
    from .export import export_onnx
    from .layers.fusion import for_inference

    _, data, task = _task_of_record(args, record, args.checkpoint)
    options = dict(int8=args.int8, calibration=args.calibration, samples=args.samples)
    if args.format == "executorch":
        from .export.executorch import export_executorch

        report = export_executorch(for_inference(task.model), record, data, args.out, **options)
        how = "XNNPACK symmetric"
    else:
        report = export_onnx(for_inference(task.model), record, data, args.out, **options)
        how = report.int8_choice["chosen"] if args.int8 else ""
    kind = f"int8 ({how}, calibrated on {report.calibration_images} training images)" if args.int8 else "fp32"
    print(f"wrote {report.path}: {report.size_bytes / 1e6:.2f} MB, {record.task} {record.model}, {kind}")
    print(report.summary())
    if args.format == "executorch":
        print(report.delegation())
    elif args.int8:
        print(report.choice_summary())


def cmd_info(args: argparse.Namespace) -> None:
    from .info import describe, format_info

    info = describe(args.file)
    print(json.dumps(_json_safe(info), indent=1) if args.json else format_info(info))


def cmd_data_synth(args: argparse.Namespace) -> None:
    from .datasets.formats import data_format
    from .datasets.synthetic import write_synthetic_once
    from .tasks import TASKS

    data = TASKS.get(args.task).data_module
    written = data_format(data.format_kind, args.format or data.default_format, args.out)
    # As training writes it: never into a folder of other files, complete or not at all.
    write_synthetic_once(args.out, written.synthetic_writer(), {"seed": args.seed})
    print(f"wrote the embedded {args.task} data set to {args.out} in the {written.name} format (seed {args.seed})")


def cmd_data_show(args: argparse.Namespace) -> None:
    if not args.config and args.task is None:
        raise MbtasksError("data show needs --config (a recipe), or --task for its demo recipe")
    from .io.outputs import output_folder
    from .tasks import TASKS

    recipes = args.config or [TASKS.get(args.task).demo_recipe]
    if args.print_config:
        return _print_config(args, recipes)
    config = _config(args, recipes=recipes)
    out = output_folder(args.out)
    from .tasks.samples import SHEETS, show_samples

    existing = [name for name in SHEETS if (out / name).exists()]
    if existing and not args.overwrite:
        raise MbtasksError(f"holds {existing[0]}: pass --overwrite to replace it, or choose another --out", out)
    _quiet_libraries()
    for line in show_samples(config, args.n, out):
        print(line)


def cmd_ablate(args: argparse.Namespace) -> None:
    if args.status is not None:
        return _print_ablation_status(args.status)
    from .ablation import (
        default_config,
        parse_heads,
        parse_resolutions,
        parse_versions,
        parse_widths,
        plan_runs,
        run_ablation,
        write_outputs,
    )
    from .config import load_config
    from .io.outputs import output_folder

    if args.task is None and args.config is None:
        raise MbtasksError("ablate needs --task (or a --config, whose task it takes)")
    if args.task is not None:
        from .tasks import TASKS

        TASKS.get(args.task)  # an unknown task is a one-line error
    recipes = args.config or [default_config(args.task)]
    if args.print_config:
        return _print_config(args, recipes)
    if args.out is None:
        raise MbtasksError("ablate needs --out, the folder for its results")
    task = args.task or load_config(recipes).task
    versions = parse_versions(args.backbones)
    widths = parse_widths(args.widths or [], versions)
    resolutions = parse_resolutions(args.resolutions) if args.resolutions else None
    heads = parse_heads(args.heads) if args.heads else None
    runs = plan_runs(
        task, recipes, args.set or [], versions, widths, resolutions, heads
    )  # the whole grid checked first
    shown = ", ".join(str(recipe) for recipe in recipes)  # as given, else the demo recipe's whole path
    print(f"{len(runs)} {'profile-only ' if args.profile_only else ''}{task} runs from {shown} in {args.out}")
    output_folder(args.out)
    if args.launcher is None:
        rows = run_ablation(runs, recipes, args.out, args.profile_only, args.runs, overwrite=args.overwrite)
    else:
        rows = _ablation_jobs(args, runs, recipes)
    written = write_outputs(rows, args.out, args.profile_only, args.runs)
    failed = sum(row["status"] != "ok" for row in rows)
    unfinished = (
        f", {len(runs) - len(rows)} not ended (mbtasks ablate --status {args.out})" if len(rows) < len(runs) else ""
    )
    print(f"{len(rows) - failed} runs done, {failed} failed{unfinished}; wrote {', '.join(str(p) for p in written)}")


def _ablation_jobs(args: argparse.Namespace, runs: list, recipes: list) -> list[dict]:
    """ablate --launcher: the grid's points as jobs (ablation/jobs.py); the rows of those that have ended."""
    from .ablation.jobs import run_grid_as_jobs
    from .ablation.run import collected_rows, grid_folders
    from .recipe_files import find_recipe

    points = grid_folders(runs, args.out, args.profile_only, args.overwrite)
    max_running = args.max_running
    if max_running is None:
        import torch

        gpus = torch.cuda.device_count() // args.gpus_per_run if args.gpus_per_run else 0
        max_running = len(points) if args.launcher == "slurm" else max(gpus, 1)
    run_grid_as_jobs(
        points,
        [find_recipe(recipe).resolve() for recipe in recipes],
        Path(args.out).resolve(),
        args.launcher,
        max_running,
        args.gpus_per_run,
        _scheduler_options(args),
        args.time,
        args.profile_only,
        args.runs,
    )
    return collected_rows(points)


def _print_ablation_status(out: str) -> None:
    """ablate --status OUT: each point's state, and the count of each."""
    from .ablation.jobs import grid_status

    if not Path(out, "runs").is_dir():
        raise MbtasksError("holds no ablation (no runs/ folder)", out)
    points = grid_status(Path(out))
    width = max((len(name) for name, _, _ in points), default=3)
    for name, state, job_id in points:
        print(f"{name.ljust(width)}  {state.ljust(7)}  {f'job {job_id}' if job_id else ''}".rstrip())
    counts = {state: sum(s == state for _, s, _ in points) for state in ("done", "running", "failed", "waiting")}
    print(", ".join(f"{count} {state}" for state, count in counts.items()))


def _add_config_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="task: det, seg, attr, embed, cls or a plugin's (default: the config's)")
    p.add_argument(
        "--config",
        action="append",
        metavar="RECIPE",
        help="a recipe: a YAML file, or the name of one the package ships (`mbtasks recipes`); repeatable: merged "
        "in order, the later over the earlier (mappings key by key)",
    )
    p.add_argument(
        "--set", action="append", metavar="KEY=VALUE", help="override a config key, after the recipes (repeatable)"
    )
    p.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved recipe (bases, every --config, --set) as YAML that --config reads back, and exit",
    )


def _add_launcher_arguments(p: argparse.ArgumentParser, launcher_help: str, wait: bool = True) -> None:
    # choices: launch.LAUNCHERS (not imported to build the parser: it imports submitit)
    p.add_argument("--launcher", choices=("local", "slurm"), help=launcher_help)
    p.add_argument("--partition", help="--launcher slurm: the partition")
    p.add_argument("--account", help="--launcher slurm: the account")
    p.add_argument("--qos", help="--launcher slurm: the quality of service")
    p.add_argument("--constraint", help="--launcher slurm: node features, e.g. a100")
    p.add_argument("--time", type=at_least(1), default=24 * 60, help="--launcher: minutes a job may run (default 1440)")
    if wait:
        p.add_argument("--wait", action="store_true", help="--launcher: wait for the job to end (default: return)")


OVERWRITE = "replace existing output files"
PREDICT_OUTPUTS = (
    "Each photo's answer under --out at its relative path (photos turned upright by EXIF; pictures in the photo's "
    "format, JPEG or PNG, unless --picture-format): det boxes in a colour per class captioned 'name score' (those "
    "at --score-threshold), detections.json (those at --keep-threshold), and a summary line; seg overlay/ (class "
    "colours and a legend) and labels/ in the data set's results format; attr the attributes at --threshold on the "
    "photo, attributes.json; embed embeddings.npy and .json (--pairs: distances and verdicts); cls the top five on "
    "the photo and in classes.json."
)


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="mbtasks", description="Vision tasks on MobileNet backbones.")
    parser.add_argument("--version", action="version", version=f"mbtasks {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", help="what to do")

    p = commands.add_parser(
        "profile",
        help="parameters, multiply-adds and CPU latency",
        description="Parameters, multiply-adds and median CPU latency at batch 1 of one model, or a table of the "
        "whole MobileNet family beside the papers' figures.",
    )
    p.add_argument("--model", help="model name (default: a table of the whole MobileNet family)")
    p.add_argument("--width", type=float, help="width multiplier")
    p.add_argument("--resolution", type=_resolution, help="N or HxW (default 224; a detector's own size)")
    p.add_argument(
        "--option",
        type=_option,
        action="append",
        metavar="KEY=VALUE",
        help="a model option, e.g. reduced_tail=true (repeatable)",
    )
    p.add_argument("--runs", type=at_least(1), default=30, help="timed runs for the median latency")
    p.add_argument("--json", action="store_true", help="print one JSON object: params, madds, latency_ms")
    p.set_defaults(func=cmd_profile)

    p = commands.add_parser(
        "weights",
        help="import checkpoints from torchvision or timm",
        description="Weights from elsewhere turned into mbtasks weights files (for model.weights and "
        "model.backbone_weights).",
    )
    weights = p.add_subparsers(dest="weights_command", required=True, metavar="COMMAND", help="what to do")
    p = weights.add_parser(
        "import",
        help="convert torchvision / timm weights (a state-dict file, or by name) to mbtasks' layout",
        description="Convert torchvision or timm weights (a state-dict file, or weights by name from their caches) "
        "to an mbtasks weights file, checked against the mbtasks model's layout.",
    )
    p.add_argument("--from", dest="source", choices=["torchvision", "timm"], help="a state-dict file's library")
    p.add_argument(
        "src",
        help="state-dict file saved from the source model, or weights by name: "
        "torchvision:<Enum>.<NAME> (e.g. torchvision:MobileNet_V3_Large_Weights.IMAGENET1K_V1) "
        "or timm:<name> (e.g. timm:mobilenetv3_large_100.ra_in1k), from their caches",
    )
    p.add_argument("--model", help="mbtasks model name (a state-dict file's; weights by name name their own)")
    p.add_argument("--out", required=True, help="mbtasks weights file to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.set_defaults(func=cmd_weights_import)

    p = commands.add_parser(
        "train",
        help="train a model (Lightning)",
        description="Train a task's model on a recipe (--config: a file or a packaged recipe's name; --set on top) "
        "with Lightning; checkpoints, logs and the recipe go to train.out_dir.",
    )
    _add_config_arguments(p)
    p.add_argument("--resume", help="checkpoint to resume from (e.g. OUT/checkpoints/last.ckpt)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="train.out_dir holds an earlier run's checkpoints: remove them and train afresh",
    )
    _add_launcher_arguments(
        p,
        "submit as a job through submitit instead of running here: slurm (sbatch; nodes, one task per device, GPUs "
        "and CPUs from the recipe; requeued with its checkpoint before its time limit) or local (this machine)",
    )
    p.set_defaults(func=cmd_train)

    p = commands.add_parser(
        "evaluate",
        help="official metric of a checkpoint, or of a saved results file",
        description="The data set's official metric of a checkpoint (its recipe's validation data, or --config's), "
        "of an exported model (--runtime), of whole-model weights (model.weights), or of saved predictions "
        "without a model (det: --annotations with --detections; seg: --gt with --predictions).",
    )
    _add_config_arguments(p)
    p.add_argument("--checkpoint", help="training checkpoint")
    p.add_argument("--annotations", help="det: COCO ground-truth json (with --detections: no model)")
    p.add_argument("--detections", help="det: COCO results json")
    p.add_argument(
        "--gt",
        help="seg: data root (Cityscapes with gtFine/, VOC, a folder of masks) whose ground truth "
        "--predictions are scored against, as its format scores them (no model)",
    )
    p.add_argument(
        "--predictions",
        help="seg: folder of saved predictions (Cityscapes: labelId PNGs; others: class-"
        "index PNGs, as --save-predictions writes them)",
    )
    p.add_argument("--split", default="val", help="seg: split of --gt to score (default val)")
    p.add_argument(
        "--save-predictions",
        help="seg: write the predictions here in the data format's results layout "
        "(Cityscapes: labelId and colour PNGs; others: class-index PNGs)",
    )
    p.add_argument("--scales", type=_scales, help="seg: multi-scale inference, e.g. 0.75,1.0,1.25")
    p.add_argument("--flip", action="store_true", help="seg: add horizontally flipped inference")
    p.add_argument(
        "--runtime",
        choices=["torch", "onnxruntime", "executorch"],
        default="torch",
        help="torch: the --checkpoint's network in PyTorch (default); onnxruntime, executorch: an exported --model",
    )
    p.add_argument(
        "--model",
        help="onnxruntime: an ONNX file, executorch: a .pte program, written by `mbtasks export` (its data config "
        "inside)",
    )
    p.add_argument(
        "--coco-backend",
        metavar="NAME",
        help="det: faster-coco-eval (default; pycocotools' figures within 1e-12, several times faster) or "
        "pycocotools (its figures to the last bit)",
    )
    p.add_argument("--json", help="also write the figures to this JSON file")
    p.add_argument(
        "--report",
        metavar="DIR",
        help="also write a report to open in a browser: DIR/index.html with the headline figures, per-class tables "
        "and charts (det: AP and COCO's precision-recall curves; seg: IoU and the confusion matrix; attr: AP per "
        "attribute; embed: ROC and distance histograms; cls: confusion matrix), the worst images beside their "
        "ground truth, PNGs beside it (works offline)",
    )
    p.add_argument(
        "--report-worst",
        type=at_least(0),
        default=12,
        metavar="N",
        help="how many of the worst-scored images the report shows (default 12)",
    )
    p.add_argument("--overwrite", action="store_true", help=f"{OVERWRITE} (--json, --save-predictions, --report)")
    p.set_defaults(func=cmd_evaluate)

    p = commands.add_parser(
        "export",
        help="write a checkpoint's network to ONNX (fp32 or int8), checked against PyTorch",
        description="The graph: seg/attr/embed/cls the network (normalised images -> logits / embeddings); det the "
        "whole detector, one [0, 1] image of any size -> boxes in its pixels, scores, labels (resizing, "
        "normalisation, network, box decoding, torchvision SSD's selection with NMS, boxes scaled back).",
    )
    _add_config_arguments(p)
    p.add_argument("--checkpoint", required=True, help="training checkpoint")
    p.add_argument(
        "--format",
        default="onnx",
        choices=["onnx", "executorch"],
        help="onnx (default), or executorch: a .pte program lowered to XNNPACK for phones (the mobile extra); det "
        "keeps its NMS inside, in fixed-size operators",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantisation, the fastest here of a few ways (QDQ or QOperator, per-channel or "
        "per-tensor weights, depthwise convolutions int8 or fp32), timed at export",
    )
    p.add_argument(
        "--calibration", type=at_least(1), default=100, help="int8: training images to calibrate on (default 100)"
    )
    p.add_argument(
        "--samples",
        type=at_least(1),
        default=4,
        help="validation images to compare onnxruntime with pytorch on (default 4)",
    )
    p.add_argument("--out", required=True, help="ONNX file (or .pte program) to write")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.set_defaults(func=cmd_export)

    p = commands.add_parser(
        "predict",
        help="apply a checkpoint, an exported ONNX file or an ExecuTorch program to photos (every task)",
        description=PREDICT_OUTPUTS,
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="training checkpoint, or ONNX file or ExecuTorch .pte program from `mbtasks export`",
    )
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (searched recursively for image extensions) and glob patterns",
    )
    p.add_argument("--out", required=True, help="folder for the pictures and the JSON")
    p.add_argument("--task", help="check that the model is of this task (it comes from the file)")
    p.add_argument("--batch-size", type=at_least(1), default=8, help="photos per forward pass (default 8)")
    p.add_argument("--workers", type=at_least(0), default=2, help="DataLoader processes reading photos (default 2)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto; ONNX: cpu)")
    p.add_argument("--strict", action="store_true", help="stop at a file that is not an image (default: skip it)")
    p.add_argument(
        "--max-pixels",
        type=at_least(1),
        default=100_000_000,
        help="refuse (or with --strict, stop at) a photo of more pixels than this, read from its header before "
        "decoding (default 100000000)",
    )
    p.add_argument(
        "--score-threshold",
        type=_fraction,
        help="det: draw the boxes scoring at least this (default 0.3); detections.json keeps more (--keep-threshold)",
    )
    p.add_argument(
        "--keep-threshold",
        type=_fraction,
        help="det: detections.json keeps every detection scoring at least this (default 0.05, as torchvision's "
        "box_score_thresh; never above --score-threshold)",
    )
    p.add_argument(
        "--picture-format",
        choices=["auto", "png", "jpg"],
        default="auto",
        help="format of the drawn pictures: auto keeps the photo's (JPEG in, JPEG out; others PNG) (default auto)",
    )
    p.add_argument("--scales", type=_scales, help="seg: multi-scale inference, e.g. 0.75,1.0,1.25")
    p.add_argument("--flip", action="store_true", help="seg: add horizontally flipped inference")
    p.add_argument(
        "--threshold",
        type=float,
        help="attr: write attributes of at least this probability (default 0.5); embed: the distance "
        "below which a pair is the same person (default: the one the checkpoint's validation chose)",
    )
    p.add_argument("--pairs", help="embed: a file of image pairs (two paths a line) whose distances to print")
    p.add_argument("--overwrite", action="store_true", help=f"{OVERWRITE} (an earlier run's under --out)")
    p.set_defaults(func=cmd_predict)

    p = commands.add_parser(
        "info",
        help="what a checkpoint, weights file, exported ONNX file or ExecuTorch program holds",
        description="Task, model, options, classes, the recipe it was trained with, the last validation metrics, "
        "parameters, multiply-adds (at the recipe's input size; a detector's own), file size and sha256.",
    )
    p.add_argument(
        "file",
        help="training checkpoint, mbtasks weights file, or ONNX file or ExecuTorch .pte program from `mbtasks export`",
    )
    p.add_argument("--json", action="store_true", help="print it all as one JSON object")
    p.set_defaults(func=cmd_info)

    p = commands.add_parser(
        "data",
        help="embedded data sets, and a recipe's samples drawn",
        description="The embedded data sets, generated from a seed, that recipes with data.root: null train on; a "
        "recipe's samples drawn as training and evaluation see them.",
    )
    data = p.add_subparsers(dest="data_command", required=True, metavar="COMMAND", help="what to do")
    p = data.add_parser(
        "synth",
        help="write an embedded data set in its real format",
        description="Write a task's embedded data set to a new folder, in the layout of a real data set's format.",
    )
    p.add_argument("--task", required=True, help="whose data set: det, seg, attr, embed, cls or a plugin's")
    p.add_argument("--format", help="the data format to write it in (default: the task's own, e.g. cityscapes)")
    p.add_argument("--out", required=True, help="folder to write it to (new, or empty)")
    p.add_argument("--seed", type=at_least(0), default=0, help="the set's seed (default 0)")
    p.set_defaults(func=cmd_data_synth)
    p = data.add_parser(
        "show",
        help="draw a recipe's training samples after augmentation, and its validation samples",
        description="Grids of a recipe's samples drawn with their boxes, masks or labels: train.png, the first "
        "training samples of epoch 0 augmented as the training loop augments them; val.png, the first validation "
        "samples as evaluation reads them. The first thing to look at when a label map or an augmentation is wrong.",
    )
    _add_config_arguments(p)
    p.add_argument("--n", type=at_least(1), default=16, help="samples of each split (default 16)")
    p.add_argument("--out", required=True, help="folder for train.png and val.png")
    p.add_argument("--overwrite", action="store_true", help=OVERWRITE)
    p.set_defaults(func=cmd_data_show)

    p = commands.add_parser(
        "ablate",
        help="train, evaluate and profile versions x widths x resolutions of a task",
        description="Every combination trained and evaluated on the task's recipe (default: its demo recipe, "
        "a packaged one or a plugin's own), or only profiled; runs finished with the same settings are "
        "skipped on a rerun, one finished with other settings is kept (the new run gets a folder of its own, "
        "or replaces it with --overwrite), a failed run is recorded and the rest go on. Writes results.csv, "
        "results.md and PNG plots (metric against multiply-adds and latency; profile-only: latency against "
        "multiply-adds) in --out.",
    )
    _add_config_arguments(p)
    p.add_argument("--backbones", default="v1,v2,v3_large,v3_small", help="versions, e.g. v1,v3_large (default: all)")
    p.add_argument(
        "--widths",
        action="append",
        metavar="[VERSION=]W,W",
        help="width multipliers: a plain list for every version (default 1.0), VERSION=... for one "
        "(repeatable), e.g. --widths 0.5,1.0 --widths v2=0.35,1.4",
    )
    p.add_argument(
        "--heads",
        metavar="HEAD,HEAD",
        help="head families to compare on each version, e.g. ssdlite320,ssd300,fasterrcnn (frameworks on one "
        "backbone; each at its own size unless --resolutions); default: the recipe's model",
    )
    p.add_argument(
        "--resolutions",
        metavar="N,HxW",
        help="input sizes (det: the detector's size; seg: the training crop; default: the config's)",
    )
    p.add_argument(
        "--profile-only",
        action="store_true",
        help="parameters, multiply-adds and latency only; classes from model.options.num_classes, "
        "else the task's usual data set's (ImageNet's 1000 for cls)",
    )
    p.add_argument("--runs", type=at_least(0), default=10, help="timed runs for the median latency (0: no latency)")
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="a run finished before with other settings is replaced (default: kept, the new one runs in "
        "RUN-2, RUN-3, ...)",
    )
    p.add_argument("--out", help="folder for results.csv, results.md, the plots and runs/ (required)")
    _add_launcher_arguments(
        p,
        "every point a job through submitit, each point's state kept in its folder (a rerun starts none twice): "
        "slurm (one job array; returns at once) or local (--max-running at once on this machine; waits for them)",
        wait=False,
    )
    p.add_argument(
        "--max-running",
        type=at_least(1),
        help="--launcher: points running at once (default: slurm all, local the GPU count / --gpus-per-run, or 1)",
    )
    p.add_argument(
        "--gpus-per-run", type=at_least(0), default=0, help="--launcher: GPUs of each point's job (default 0)"
    )
    p.add_argument(
        "--status", metavar="OUT", help="list each point of the ablation in OUT: done, running, failed or waiting"
    )
    p.set_defaults(func=cmd_ablate)

    p = commands.add_parser(
        "recipes",
        help="the recipes the package ships, by name",
        description="The recipes shipped with mbtasks, each addressed by its name (`--config NAME`): task, model, "
        "data (root, or the embedded set; format where the recipe names one) and what it reproduces. A base "
        "holds settings its recipes share (`base: NAME`).",
    )
    p.add_argument("--task", help="only this task's recipes")
    p.add_argument("--json", action="store_true", help="print them as a JSON list, one object a recipe")
    p.set_defaults(func=cmd_recipes)
    return parser


def _quiet_libraries() -> None:
    # Lightning's banners (accelerator lines, adverts for its cloud products) and a deprecation inside it
    # are not the user's business; warnings of ours and real Lightning warnings still show.
    import logging
    import warnings

    import pytorch_lightning  # noqa: F401  (it sets its loggers' levels when imported: set ours after)

    for name in ("pytorch_lightning", "lightning", "lightning_fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", message=".*isinstance\\(treespec, LeafSpec\\)")


def _fail(message: str) -> int:
    print(f"mbtasks: error: {message}", file=sys.stderr)
    return 2


def _lightning_refusal(error: Exception) -> bool:
    """Lightning's MisconfigurationException (looked up only if Lightning was imported: profile never imports it)."""
    exceptions = sys.modules.get("lightning_fabric.utilities.exceptions")
    return exceptions is not None and isinstance(error, exceptions.MisconfigurationException)


def _out_of_memory(error: Exception) -> bool:
    """Python's, CUDA's (torch.OutOfMemoryError) or the CPU allocator's (a RuntimeError) report of too little memory."""
    return (
        isinstance(error, MemoryError)
        or type(error).__name__ == "OutOfMemoryError"
        or "can't allocate memory" in str(error)
    )


def main(argv: list[str] | None = None) -> int:
    """Run a command. User mistakes print one line and exit 2; an unexpected error keeps its traceback (exit 1)."""
    args = build_parser().parse_args(argv)
    try:
        with stop_on_signals():
            args.func(args)
    except Interrupted as stop:
        print(f"mbtasks: {stop.message}", file=sys.stderr)
        return stop.exit_status
    except BrokenPipeError:
        # The reader of our output left (`mbtasks ... | head`): no traceback. Python's documented way out: stdout to
        # devnull so that the interpreter's final flush does not fail again, and exit 1 as Python does on EPIPE.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except MbtasksError as error:
        # Raised in a DataLoader worker, torch re-raises it with the worker's traceback: its last line is ours.
        return _fail(str(error).strip().splitlines()[-1].removeprefix("mbtasks.errors.MbtasksError: "))
    except OSError as error:
        from .io.outputs import WRITE_ERRNOS, write_error

        if error.errno not in WRITE_ERRNOS:
            raise
        # a write that the places writing through io/outputs.py did not name (a logger's file): still one line
        return _fail(str(write_error(error, error.filename or "an output file")))
    except ModuleNotFoundError as error:
        if (error.name or "mbtasks").split(".")[0] == "mbtasks":
            raise  # a module of mbtasks itself: a bug, not the user's installation
        return _fail(str(missing_package(error.name)))
    except Exception as error:
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        if _lightning_refusal(error):
            return _fail("Lightning refuses the settings: " + " ".join(str(error).split()))
        if _out_of_memory(error):
            # The sizes asked for (input size, batch size, devices) do not fit this machine: the user's to change.
            return _fail(f"out of memory ({first_line[:200]}): use a smaller input size or batch size")
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
