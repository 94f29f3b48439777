"""The ``kddiag`` command line: a thin layer over :mod:`kddiag.pipeline`."""
from __future__ import annotations

import os
import re
import sys
import warnings
from importlib.resources import as_file, files

import click

from kddiag import __version__
from kddiag.diagnosis.ids import FINDING_IDS, HEALTHY, KD_HELPED
from kddiag.errors import KddiagError, is_rust_panic, printable

EXIT_ERROR, EXIT_USAGE, EXIT_GATED = 1, 2, 3
IMAGE_LAYOUTS = ("NCHW", "NHWC")  # kddiag.options.IMAGE_LAYOUTS, spelled out to keep numpy out of --help
PROGRESS_MODES = ("auto", "bar", "lines", "none")  # kddiag.progress.MODES

# The demo pair, package data built by ``python -m case_studies demo-pair`` in a source checkout.
DEMO_DIR = files("kddiag") / "demo"
DEMO_TEACHER, DEMO_STUDENT, DEMO_BASELINE = (DEMO_DIR / f"{role}.pt" for role in ("teacher", "student", "baseline"))
DEMO_EVAL_DATA, DEMO_TRANSFER_DATA = "digits:test", "digits:train"


class KddiagGroup(click.Group):
    """Shows kddiag's own errors as one line on stderr with exit code 1, and click's usage errors (an unknown
    option, a missing argument, a bad value) as one line with exit code 2, never a traceback; keeps the
    warnings of the libraries it calls (torch, numpy) off the user's terminal unless PYTHONWARNINGS asks."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as error:  # the group's own options: kddiag --nope
            _usage_error(error)

    def main(self, *args, **kwargs):
        try:
            return super().main(*args, **kwargs)
        except SystemExit as done:
            if getattr(sys.modules.get("__main__"), "main", None) is self:  # the program itself (the console
                _quick_exit(done.code)  # script or python -m kddiag), never a caller in the same process
            raise

    def invoke(self, ctx):
        with warnings.catch_warnings():
            if not sys.warnoptions:
                warnings.simplefilter("ignore")
            try:
                return super().invoke(ctx)
            except KddiagError as error:
                click.echo(f"kddiag: error: {_rank()}{printable(str(error))}", err=True)
                ctx.exit(EXIT_ERROR)
            except click.UsageError as error:  # a command's arguments and options, an unknown command
                _usage_error(error)
            except MemoryError as error:  # numpy's carries the size asked for; the report was not written
                _out_of_memory(ctx, str(error))
            except RuntimeError as error:
                if "can't allocate memory" not in str(error):  # torch's allocator says so in a RuntimeError
                    raise
                asked = re.search(r"allocate (\d+) bytes", str(error))
                _out_of_memory(ctx, f"{int(asked.group(1)):,} bytes asked for" if asked else "")
            except OSError as error:  # a read or write the operating system refused (an I/O error, a full disk)
                what = f"'{printable(str(error.filename))}': " if error.filename else ""
                click.echo(f"kddiag: error: {_rank()}{what}{printable(error.strerror or str(error))[:300]}", err=True)
                ctx.exit(EXIT_ERROR)
            except BaseException as error:
                if not is_rust_panic(error):  # a Rust library's panic (tokenizers) past the handlers that name it
                    raise
                click.echo(f"kddiag: error: {_rank()}a native library panicked "
                           f"({printable(' '.join(str(error).split()))[:300]})", err=True)
                ctx.exit(EXIT_ERROR)


def _quick_exit(code) -> None:
    """End the process once the command is done: the exit handlers run (atexit, weakref finalizers), the
    interpreter's teardown is skipped (freeing every module of torch and its loaded programs: 0.3-1 s here,
    after the report is written)."""
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:  # a closed or broken pipe: nothing more to say
            pass
    if code is None or isinstance(code, int):
        os._exit(code or 0)
    sys.stderr.write(f"{code}\n")  # as sys.exit prints a message
    sys.stderr.flush()
    os._exit(1)


def _out_of_memory(ctx, reason: str) -> None:
    reason = printable(" ".join(reason.split()))[:200]
    click.echo(f"kddiag: error: {_rank()}out of memory{f' ({reason})' if reason else ''}; nothing was written: give "
               f"fewer or smaller inputs, or a smaller --batch-size", err=True)
    ctx.exit(EXIT_ERROR)


def _rank() -> str:
    """'rank 1 of 2: ' under torchrun, whose ranks print to one terminal; '' for one process."""
    world_size, rank = os.environ.get("WORLD_SIZE", "1"), os.environ.get("RANK", "?")
    if not world_size.isdigit() or int(world_size) <= 1:
        return ""
    return f"rank {rank if rank.isdigit() else '?'} of {int(world_size)}: "


def _usage_error(error: click.UsageError):
    """click's usage error as one line, ``kddiag: error: ...`` (where --help is), exit code 2. A bare
    ``kddiag`` still prints the help."""
    if isinstance(error, click.exceptions.NoArgsIsHelpError):
        raise error
    message = " ".join(error.format_message().split()).removesuffix(".")
    command = error.ctx.command_path if error.ctx is not None else "kddiag"
    click.echo(f"kddiag: error: {printable(message)}; see '{printable(command)} --help'", err=True)
    raise click.exceptions.Exit(EXIT_USAGE)


@click.group(cls=KddiagGroup, epilog="Case studies (published KD failures reproduced on CPU) run from a source "
                                    "checkout, not from the installed package: python -m case_studies NAME "
                                    "(python -m case_studies --list).")
@click.version_option(__version__, prog_name="kddiag")
def main():
    """Diagnose why knowledge distillation did not work (Tang et al. 2020's three levels)."""


def _fail_on(value: str | None) -> str | float | None:
    if value is None or value in FINDING_IDS:
        return value
    try:
        severity = float(value)
    except ValueError:
        raise click.BadParameter(f"expected a severity in [0, 1] or a finding id ({', '.join(FINDING_IDS)}); "
                                 f"got '{value}'") from None
    if not 0 <= severity <= 1:
        raise click.BadParameter(f"severity must be in [0, 1]; got {severity}")
    return severity


def _numbers(value: str, convert: type) -> list:
    """'0.5,0.25' → [0.5, 0.25]: comma-separated numbers, refused as a usage error when one is not."""
    try:
        return [convert(part) for part in value.split(",")]
    except ValueError:
        kind = "integers" if convert is int else "numbers"
        raise click.BadParameter(f"expected {kind} separated by commas; got '{value}'") from None


def _normalize(value: str | None) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """--normalize MEAN,STD or M1,M2,M3,S1,S2,S3 → (means, stds), checked."""
    if value is None:
        return None
    numbers = _numbers(value, float)
    if len(numbers) % 2:
        raise click.BadParameter(f"expected one mean and one std per channel, all means then all stds "
                                 f"(2 numbers for 1 channel, 6 for 3); got {len(numbers)} numbers")
    half = len(numbers) // 2
    from kddiag.options import check_normalize

    try:
        return check_normalize(numbers[:half], numbers[half:], "means and stds")
    except KddiagError as error:
        raise click.BadParameter(str(error).removeprefix("means and stds: ")) from None


def _resize(value: str | None) -> tuple[int, int] | None:
    """--resize H,W → (height, width), checked."""
    if value is None:
        return None
    from kddiag.options import check_resize

    try:
        return check_resize(tuple(_numbers(value, int)), "the size")
    except KddiagError:
        raise click.BadParameter(f"expected two positive integers HEIGHT,WIDTH; got '{value}'") from None


def _writable(out: str | None) -> str | None:
    """--out, refused at once when it cannot be written (before any model is loaded)."""
    if out is not None:
        from kddiag.report.json import check_writable

        check_writable(out)
    return out


def _check_arrays(out: str | None, arrays: bool) -> None:
    if arrays and not out:
        raise KddiagError("--arrays writes report-arrays.npz into --out: give --out DIR as well")


def _finish(report, *, out: str | None, as_json: bool, fail_on, arrays: bool = False) -> None:
    """Print the summary (or JSON), write the report files, and apply --fail-on."""
    from kddiag.pipeline import write_outputs
    from kddiag.report.json import render_json
    from kddiag.report.text import render_text

    written = write_outputs(report, out, arrays=arrays) if out else {}
    click.echo(render_json(report) if as_json else render_text(report))
    for path in written.values():
        click.echo(f"wrote {printable(str(path))}", err=as_json)
    _gate([report.diagnosis], fail_on)


def _gate(diagnoses, fail_on) -> None:
    """--fail-on: exit with code 3 when a finding has at least that severity or that id; never under a
    'kd-helped' verdict (KD beat the baseline: its findings are room to improve, not failures)."""
    if fail_on is None:
        return
    gating = [f for diagnosis in diagnoses if diagnosis.verdict != KD_HELPED for f in diagnosis.findings
              if f.id != HEALTHY and (f.id == fail_on if isinstance(fail_on, str) else f.severity >= fail_on)]
    if gating:
        click.echo(f"kddiag: --fail-on {fail_on}: " + ", ".join(f"{f.id} ({f.severity:.2f})" for f in gating),
                   err=True)
        sys.exit(EXIT_GATED)


def output_options(*, default_out: str | None = None, arrays: bool = True):
    """--out, --json, --arrays (with ``arrays``) and --fail-on, shared by the commands that produce a report."""
    def decorate(command):
        options = [
            click.option("--out", default=default_out, show_default=default_out is not None,
                         callback=lambda ctx, param, value: _writable(value),
                         help="Directory for report.json and report.html (checked before any work)."),
            click.option("--json", "as_json", is_flag=True, help="Print the JSON report instead of the summary."),
            click.option("--arrays", is_flag=True,
                         help="Also write every class-by-class matrix to report-arrays.npz in --out (report.json "
                              "summarizes them beyond 100 classes)."),
            click.option("--fail-on", callback=lambda ctx, param, v: _fail_on(v),
                         help="Exit with code 3 if a finding fires with at least this severity (0-1) or this id "
                              "(never when KD beat the baseline: verdict kd-helped)."),
        ]
        for option in reversed(options if arrays else options[:2] + options[3:]):
            command = option(command)
        return command
    return decorate


def input_options(command):
    """The options of the commands that load models and data: data sets, image preparation, baseline,
    architectures, checkpoints, settings, classes, trust, running."""
    for option in reversed((
        click.option("--data", help="Held-out eval set: .pt/.npz file with x, y; an image folder (one sub-folder per "
                                    "class, sorted names = class order); a JSON data spec {\"path\": ..., "
                                    "\"normalize\": {\"mean\": [...], \"std\": [...]}, \"resize\": [H, W], "
                                    "\"layout\": ...}; or a built-in name (digits, hierarchy)."),
        click.option("--transfer-data", help="The set the student was distilled on (usually the training set); same "
                                             "forms."),
        click.option("--normalize", metavar="MEANS,STDS", callback=lambda ctx, param, v: _normalize(v),
                     help="Normalize the images of both sets per channel, all means then all stds: 0.5,0.25 (1 "
                          "channel) or 0.485,0.456,0.406,0.229,0.224,0.225 (RGB); after uint8 pixels are scaled to "
                          "[0, 1]. A data spec's own 'normalize' must agree."),
        click.option("--resize", metavar="H,W", callback=lambda ctx, param, v: _resize(v),
                     help="Resize the images of both sets to height H, width W (bilinear, antialiased; Pillow for "
                          "image folders). Needed when a folder's images differ in size."),
        click.option("--layout", type=click.Choice(IMAGE_LAYOUTS, case_sensitive=False), metavar="[NCHW|NHWC]",
                     help="Axis order of 4-D image arrays in .pt/.npz files (default: the axis, 1 or 3, of 1, 3 or "
                          "4 entries; axis 1 when both are). uint8 arrays of 3-4 dims are always images; float "
                          "ones only with an image option."),
        click.option("--baseline", help="A student of the same kind trained without KD."),
        click.option("--teacher-arch", metavar="SPEC",
                     help="Architecture for a teacher state dict: 'package.module:Class', 'package.module:Class(28, "
                          "hidden=64)' (literal arguments only; quote it in the shell), 'path/to/models.py:Class(28)', "
                          "or built-in mlp:IN-...-OUT."),
        click.option("--student-arch", metavar="SPEC", help="Architecture for a student state dict (as --teacher-arch)."),
        click.option("--baseline-arch", metavar="SPEC",
                     help="Architecture for a baseline state dict (as --teacher-arch; default: --student-arch)."),
        click.option("--ema", multiple=True, type=click.Choice(["teacher", "student", "baseline"]),
                     help="Use this model's EMA weights (timm's state_dict_ema, model_ema); repeatable. Default: raw "
                          "weights, EMA only when no other weights fit."),
        click.option("--classes", help="JSON file with class names and groups: {\"names\": [...], \"groups\": [...]}."),
        click.option("--trust-pickle", is_flag=True,
                     help="Unpickle whole pickled models and other objects in checkpoints (runs code from the file); "
                          "without it they are refused, or skipped when the weights lie beside them."),
        click.option("--trust-program", is_flag=True,
                     help="Run TorchScript/torch.export programs that call operators outside the allowlist."),
        click.option("--trust-remote-code", is_flag=True,
                     help="Let a Hugging Face model directory run the modelling code it ships (auto_map); "
                          "without it such a model is refused."),
        click.option("--max-length", type=int,
                     help="Text data (.jsonl, .txt) for Hugging Face models: tokens per sequence, longer text "
                          "truncated (default: the tokenizer's maximum, within reason)."),
        click.option("--feature-layer", help="Module whose input is the penultimate feature (default: the last Linear)."),
        click.option("--batch-size", type=int, default=512, show_default=True, help="Batch size for the forward passes."),
        click.option("--device", help="Torch device (default: CUDA when present, else CPU)."),
        *_progress_flags(),
        click.option("--full-paths", is_flag=True,
                     help="Name files by their absolute paths in the reports (default: relative to the working "
                          "directory, so a shared report does not show where your files live)."),
    )):
        command = option(command)
    return command


def progress_options(command):
    """--progress MODE and --no-progress (the same as --progress none), for the commands without input_options."""
    for option in reversed(_progress_flags()):
        command = option(command)
    return command


def _progress_flags() -> tuple:
    return (
        click.option("--progress", type=click.Choice(PROGRESS_MODES, case_sensitive=False), is_flag=False,
                     flag_value="auto", default=None, metavar="[auto|bar|lines|none]",
                     help="Progress on stderr, never stdout: a bar (on a terminal), a line every 10 s (lines: "
                          "for CI logs and nohup), or none. Default auto: a bar when stderr is a terminal, "
                          "else lines."),
        click.option("--no-progress", is_flag=True, help="No progress (--progress none)."),
    )


def _progress(options: dict) -> str:
    """The progress mode of --progress and --no-progress (popped from ``options``)."""
    mode, off = options.pop("progress"), options.pop("no_progress")
    if off and mode not in (None, "none"):
        raise click.UsageError(f"--no-progress and --progress {mode} contradict each other: give one",
                               ctx=click.get_current_context(silent=True))
    return "none" if off else (mode or "auto").lower()


def config_option(*, multiple: bool = False):
    """--config FILE: τ and α from the training run's own config (torchdistill/mdistiller YAML, Lightning
    hparams.yaml); with ``multiple``, one for every student or one per student."""
    each = " Once for every student, or once per student in order." if multiple else ""
    return click.option("--config", metavar="FILE", multiple=multiple,
                        help="The training run's config, read for τ and α: torchdistill YAML (its KDLoss), mdistiller "
                             "YAML (KD.TEMPERATURE, KD.LOSS weights) or Lightning hparams.yaml (temperature/tau/T, "
                             "alpha). Precedence: --temperature/--alpha, then this, then the checkpoint, then "
                             "guessed; a value given both ways must agree." + each)


def probe_options(command):
    """--probe and its budget: short paired trainings of the student under each candidate setting."""
    for option in reversed((
        click.option("--probe", is_flag=True,
                     help="Test the advice on this pair: train fresh copies of the student under the current τ/α "
                          "and each candidate setting (neighbouring τ, α halved, α = 0, the teacher calibrated, "
                          "the findings' remedies) and advise only what beat the current setting. Needs a "
                          "trainable student (state dict + architecture, nn.Module, Hugging Face folder) and both "
                          "sets."),
        click.option("--probe-epochs", type=float,
                     help="Train each setting as long as your student was trained: this many passes over the "
                          "transfer set; settings are then ranked where your training stops (default: the "
                          "epochs the student's checkpoint records, else --probe-steps' default)."),
        click.option("--probe-steps", type=int, help="Adam steps per setting and seed, instead of epochs (default: "
                                                     "ten passes over the transfer set, at least 100 steps, "
                                                     "doubled up to 2,000 while the current setting still learns)."),
        click.option("--probe-seeds", type=int,
                     help="Initializations per setting (paired: every setting starts from the same ones; default: "
                          "3 when the probes train as long as your student did, else 2, as validated)."),
        click.option("--probe-lr", type=float,
                     help="Adam learning rate (default: the checkpoint's, else a short check of five rates)."),
        click.option("--probe-batch-size", type=int,
                     help="Transfer examples (sequences, for text) per step (default: the checkpoint's, else 64)."),
    )):
        command = option(command)
    return command


def _inspect_options(options: dict):
    """The InspectOptions of a command's parsed options (popping the image and probe options)."""
    from kddiag.options import ImageOptions, InspectOptions, ProbeOptions

    probe = {name: options.pop(f"probe_{name}") for name in ("steps", "epochs", "seeds", "lr", "batch_size")
             if f"probe_{name}" in options}  # the commands without --probe have none
    if options.pop("probe", False):
        options["probe"] = ProbeOptions(**probe)
    elif any(probe.get(name) is not None for name in ("steps", "epochs", "lr", "batch_size")):
        raise KddiagError("--probe-steps/--probe-epochs/--probe-lr/--probe-batch-size set how the probes "
                          "train: add --probe to run them")

    options["progress"] = _progress(options)
    options["ema"] = tuple(options["ema"])
    mean, std = options.pop("normalize") or (None, None)
    images = ImageOptions(mean=mean, std=std, resize=options.pop("resize"), layout=options.pop("layout"))
    return InspectOptions(images=images, **options)


@main.command()
@click.argument("teacher")
@click.argument("student", required=False)
@input_options
@click.option("--temperature", type=float, help="Distillation temperature τ used to train the student.")
@click.option("--alpha", type=float, help="Weight of the soft (KD) term in the student's loss, in [0, 1].")
@config_option()
@probe_options
@output_options()
def inspect(teacher, student, data, transfer_data, baseline, out, as_json, arrays, fail_on, **options):
    """Inspect a TEACHER / STUDENT pair and say why distillation helped or not.

    With the TEACHER alone: a check before distilling (is it calibrated, are its targets on the transfer
    set informative at τ and for which τ, does it hold class structure; with --baseline, is it better
    than the small model trained on labels alone)."""
    from kddiag.pipeline import inspect as run_inspect

    _check_arrays(out, arrays)
    report = run_inspect(teacher, student, data=data, transfer_data=transfer_data, baseline=baseline,
                         options=_inspect_options(options))
    if report is None:  # a torchrun rank other than 0: rank 0 writes the report
        return
    _finish(report, out=out, as_json=as_json, fail_on=fail_on, arrays=arrays)


@main.command()
@click.argument("teacher")
@click.argument("students", nargs=-1, required=True)
@input_options
@click.option("--temperature", metavar="T[,T...]", callback=lambda ctx, param, v: v and _numbers(v, float),
              help="Distillation τ: one for every student or one per student, in order (1,4,16). Default: "
                   "--config, else each student's checkpoint, else guessed.")
@click.option("--alpha", metavar="A[,A...]", callback=lambda ctx, param, v: v and _numbers(v, float),
              help="Weight of the soft term: one for every student or one per student, in order.")
@config_option(multiple=True)
@probe_options
@output_options(arrays=False)
def compare(teacher, students, data, transfer_data, baseline, out, as_json, fail_on, temperature, alpha, config,
            **options):
    """Compare several STUDENTS of one TEACHER in one report: their key measurements side by side, which
    is best on held-out data and why, and each one's diagnosis. The teacher (and the baseline) run once."""
    from kddiag.pipeline import compare as run_compare

    settings = {}
    for name, values in (("temperature", temperature), ("alpha", alpha)):
        if values is not None and len(values) == 1:
            options[name] = values[0]  # one value: every student's
        else:
            settings[f"{name}s"] = values
    options["config"] = config[0] if len(config) == 1 else None  # one file: every student's
    if len(config) > 1:
        settings["configs"] = list(config)
    comparison = run_compare(teacher, list(students), data=data, transfer_data=transfer_data, baseline=baseline,
                             options=_inspect_options(options), **settings)
    if comparison is None:  # a torchrun rank other than 0
        return
    from kddiag.pipeline import write_comparison
    from kddiag.report.comparison import render_comparison_json, render_comparison_text

    written = write_comparison(comparison, out) if out else {}
    click.echo(render_comparison_json(comparison) if as_json else render_comparison_text(comparison))
    for path in written.values():
        click.echo(f"wrote {printable(str(path))}", err=as_json)
    _gate([report.diagnosis for report in comparison.reports], fail_on)


def demo_report(*, probe=None, full_paths: bool = False, progress: str = "none"):
    """Inspect the shipped demo pair on the digits eval and transfer sets (``probe``: ProbeOptions;
    ``progress``: a mode of kddiag.progress.MODES)."""
    from kddiag.pipeline import inspect as run_inspect
    from kddiag.options import InspectOptions

    with as_file(DEMO_TEACHER) as teacher, as_file(DEMO_STUDENT) as student, as_file(DEMO_BASELINE) as baseline:
        return run_inspect(str(teacher), str(student), data=DEMO_EVAL_DATA, transfer_data=DEMO_TRANSFER_DATA,
                           baseline=str(baseline), options=InspectOptions(probe=probe, full_paths=full_paths,
                                                                          progress=progress))


@main.command()
@click.option("--probe", is_flag=True, help="Also test the advice on the demo pair with remedy probes (≈ 15 s).")
@click.option("--full-paths", is_flag=True, help="Name the demo files by their absolute paths in the reports.")
@progress_options
@output_options(default_out="kddiag-report")
def demo(probe, full_paths, out, as_json, arrays, fail_on, **options):
    """Inspect the demo pair shipped with kddiag (digits teacher, KD student, baseline)."""
    from kddiag.options import ProbeOptions

    _check_arrays(out, arrays)
    _finish(demo_report(probe=ProbeOptions() if probe else None, full_paths=full_paths, progress=_progress(options)),
            out=out, as_json=as_json, fail_on=fail_on, arrays=arrays)


if __name__ == "__main__":
    main()
