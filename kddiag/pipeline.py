"""The one module that calls across stages: load → collect → measure → diagnose → render."""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from kddiag.collect.batchnorm import first_batchnorm_fit, stored_normalization_fit
from kddiag.errors import KddiagError
from kddiag.inputs import ClassInfo, Dataset, InputInfo, LoadedModel, TokenInputs
from kddiag.options import DEFAULT_ALPHA, DEFAULT_TEMPERATURE, InspectOptions, RunConfig, Setting, Settings
from kddiag.readers import check_enough_data, read_data
from kddiag.results import Measurements, Report
from kddiag.types import EVAL, TRANSFER

if TYPE_CHECKING:
    from kddiag.comparison import Comparison


def inspect(teacher: Any, student: Any = None, *, data: Any = None, transfer_data: Any = None,
            baseline: Any = None, options: InspectOptions = InspectOptions()) -> Report | None:
    """Measure what ``teacher`` passed to ``student`` and diagnose why distillation fell short.

    Under ``torchrun`` every rank collects its shard of the data and rank 0 gets the report; the other
    ranks get None (:mod:`kddiag.distributed`).

    ``teacher``, ``student``, ``baseline``: a checkpoint path, an ``nn.Module`` or a ``LoadedModel``.
    Without a student it is a teacher-only check before distilling: the teacher's levels 1-2, the
    temperature what-if, and against a baseline whether the teacher is worth distilling at all;
    a state dict is built with ``options.teacher_arch``/``student_arch``/``baseline_arch`` (the
    baseline's defaults to the student's), e.g. ``'pkg.models:Net(28, hidden=64)'``.
    ``data`` (held-out eval set) and ``transfer_data`` (the set the student was distilled on): a file
    path, an image folder, a JSON data spec, a built-in name (``digits``, ``hierarchy:train``, ...) or
    a ``Dataset``; at least one. ``options.images`` prepares the images of both (:mod:`kddiag.readers.images`).

    >>> report = inspect("teacher.pt", "student.pt", data="digits:test", transfer_data="digits:train")
    >>> report.diagnosis.findings[0].id
    """
    _check_options(options)
    if data is None and transfer_data is None:
        raise KddiagError("no data: give an eval set (--data) and/or the transfer set (--transfer-data)")
    _check_baseline_options(baseline, options)
    if student is None and "student" in options.ema:
        raise KddiagError("--ema student was given but no student: give the student checkpoint, or leave the "
                          "option out for a teacher-only check")
    if student is None and options.student_arch is not None and options.probe is None:
        raise KddiagError("--student-arch was given but no student: give the student checkpoint, add --probe to "
                          "test the planned settings on fresh students of that architecture, or leave the option "
                          "out for a teacher-only check")
    run = _run(teacher, (student,), data=data, transfer_data=transfer_data, baseline=baseline, options=options)
    return None if run is None else run[0][0]


def compare(teacher: Any, students: Sequence[Any] | Mapping[str, Any], *, data: Any = None,
            transfer_data: Any = None, baseline: Any = None, options: InspectOptions = InspectOptions(),
            temperatures: Sequence[float] | None = None, alphas: Sequence[float] | None = None,
            configs: Sequence[str | os.PathLike] | None = None) -> Comparison | None:
    """Inspect several students of one teacher over one collection pass (the teacher and the baseline run
    once per batch) and say which is best on held-out data and why (:mod:`kddiag.comparison`).

    ``students``: a sequence of students (named after their files, else 'student 1', …) or a mapping
    name -> student, each as ``inspect``'s ``student``. Each student's τ and α: ``temperatures``/``alphas``
    (one per student), else ``options.temperature``/``alpha`` for all; else its training run's config
    (``configs``, one per student, else ``options.config`` for all; a value given as well must agree);
    else its checkpoint's, else the teacher's, else guessed. Under ``torchrun`` rank 0 gets the comparison,
    the other ranks None.
    """
    from kddiag.comparison import Comparison, rank

    _check_options(options)
    if data is None and transfer_data is None:
        raise KddiagError("no data: give an eval set (--data) and/or the transfer set (--transfer-data)")
    _check_baseline_options(baseline, options)
    if isinstance(students, (str, os.PathLike)) or not isinstance(students, (Sequence, Mapping)):
        raise KddiagError("students: expected a list of students or a mapping name -> student; "
                          f"got {type(students).__name__}")
    names = _student_names(students, full=options.full_paths)
    given = tuple(students.values()) if isinstance(students, Mapping) else tuple(students)
    if len(given) < 2:
        raise KddiagError(f"compare needs at least 2 students; got {len(given)}")
    _check_distinct(given)
    for option, values in (("temperature", temperatures), ("alpha", alphas), ("config", configs)):
        if values is not None and (isinstance(values, (str, bytes)) or not isinstance(values, Sequence)):
            what = "config files" if option == "config" else "numbers"
            raise KddiagError(f"{option}s: expected a list of {what}, one per student; got {type(values).__name__}")
        if values is not None and getattr(options, option) is not None:
            raise KddiagError(f"--{option}: give one value for every student or one per student, not both")
        if values is not None and len(values) != len(given):
            raise KddiagError(f"--{option}: {len(values)} values for {len(given)} students; give one per student")
    run = _run(teacher, given, data=data, transfer_data=transfer_data, baseline=baseline, options=options,
               temperatures=temperatures, alphas=alphas, configs=configs)
    if run is None:
        return None
    reports, summaries = run
    return Comparison(names=names, reports=tuple(reports), ranking=rank(names, reports, summaries))


def _run(teacher: Any, students: tuple[Any, ...], *, data: Any, transfer_data: Any, baseline: Any,
         options: InspectOptions, temperatures: Sequence[float] | None = None, alphas: Sequence[float] | None = None,
         configs: Sequence[Any] | None = None) -> tuple[list[Report], list[list]] | None:
    """Load, collect (one pass over each set for every student), measure and diagnose each student (None:
    a teacher-only check): each student's report and its sets' summaries; None on a rank other than 0."""
    from kddiag import distributed
    from kddiag.collect import collect_summaries
    from kddiag.diagnosis import diagnose
    from kddiag.diagnosis.advice import settle_advice
    from kddiag.measure import coverage_of, measure

    run_configs = _run_configs(options, configs, len(students))  # read before any model: a bad file fails fast
    names = _path_names((teacher, *students, baseline, data, transfer_data, options.classes,
                         *{c.path for c in run_configs if c is not None}), full=options.full_paths)
    loaded_teacher = as_model(teacher, "teacher", options.teacher_arch, options)
    loaded = tuple(None if s is None else as_model(s, "student", options.student_arch, options) for s in students)
    planned = None  # a teacher-only check probes fresh students of --student-arch under the planned settings
    if loaded == (None,) and options.probe is not None and options.student_arch is not None:
        from kddiag.loading.archs import build_arch

        planned = LoadedModel(f"--student-arch {options.student_arch}", "module",
                              build_arch(options.student_arch, "student"))
    loaded_baseline = None
    if baseline is not None:  # a baseline is the student trained without KD: the student's arch by default
        arch = options.baseline_arch if options.baseline_arch is not None else options.student_arch
        loaded_baseline = as_model(baseline, "baseline", arch, options)
    _check_options_used(options, loaded_teacher, loaded, loaded_baseline, probing=planned is not None)
    settings = [settings_of(options, *([] if s is None else [s]), loaded_teacher,
                            temperature=None if temperatures is None else temperatures[k],
                            alpha=None if alphas is None else alphas[k], config=run_configs[k])
                for k, s in enumerate(loaded)]  # before the forward passes
    config_inputs = [[] if c is None else [_config_input(c, s, [m for m in (student, loaded_teacher) if m])]
                     for c, s, student in zip(run_configs, settings, loaded)]  # the config files, as report inputs
    mismatched = _vocabulary_mismatches(loaded_teacher, loaded, trust_remote_code=options.trust_remote_code)
    if mismatched and len(mismatched) == sum(s is not None for s in loaded):
        return (_mismatch_reports(loaded_teacher, loaded, loaded_baseline, settings, mismatched, names),
                [[] for _ in loaded])
    if mismatched:
        raise KddiagError("students " + ", ".join(f"{k + 1} ('{loaded[k].source}')" for k in mismatched)
                          + " use another vocabulary than the teacher: compare them separately "
                            "(kddiag inspect says how the vocabularies differ)")
    datasets = {name: read_data(source, role=role, options=options, teacher=loaded_teacher)
                for name, source, role in ((EVAL, data, "data"), (TRANSFER, transfer_data, "transfer-data"))
                if source is not None}
    for name, dataset in datasets.items():
        check_enough_data(dataset, "--data" if name == EVAL else "--transfer-data")
    given_classes = None
    if options.classes:  # read before the forward passes: a bad file fails fast
        from kddiag.loading import load_class_info

        given_classes = load_class_info(options.classes)

    strata = _token_strata(datasets)
    summaries: list[list] = [[] for _ in loaded]
    with distributed.group(options.device) as ranks:
        for name, dataset in datasets.items():
            shards = collect_summaries(
                dataset, teacher=loaded_teacher, students=loaded, baseline=loaded_baseline, set_name=name,
                settings=tuple((s.temperature.value, s.alpha.value) for s in settings),
                rows=ranks.shard(len(dataset.labels)), batch_size=options.batch_size,
                device=ranks.device or options.device, feature_layer=options.feature_layer,
                progress=options.progress if ranks.is_main else "none", strata=strata.get(name))
            for k, shard in enumerate(shards):
                merged = ranks.merged(shard)
                if merged is not None:
                    summaries[k].append(merged.summary())
    if not ranks.is_main:
        return None
    n_classes = _n_classes(summaries[0], datasets)
    class_info = _class_info(given_classes, options.classes, datasets, n_classes)
    data_inputs = (
        [InputInfo(name, ds.name, ds.format or _dataset_format(ds.name), n_samples=len(ds.labels),
                   preprocessing=ds.preprocessing, **_input_stats(ds.x),
                   teacher_batchnorm=first_batchnorm_fit(loaded_teacher, ds.x, batch_size=options.batch_size),
                   teacher_normalization=stored_normalization_fit(loaded_teacher, ds.x))
         for name, ds in datasets.items()]
        + ([InputInfo("classes", options.classes, "json")] if options.classes else [])
    )
    reports = []
    for student, student_settings, student_summaries, config_input in zip(loaded, settings, summaries, config_inputs):
        models = {role: m for role, m in (("teacher", loaded_teacher), ("student", student),
                                          ("baseline", loaded_baseline)) if m is not None}
        measurements = measure(student_summaries, settings=student_settings, class_info=class_info)
        diagnosis = diagnose(measurements, settings=student_settings, n_classes=n_classes,
                             teacher_only=student is None, inputs=tuple(data_inputs))
        probe = None
        if options.probe is not None and (student or planned) is not None:
            probe = _probe(loaded_teacher, student or planned, datasets, measurements, diagnosis, student_settings,
                           options, device=ranks.device or options.device, world_size=ranks.world_size)
        diagnosis = settle_advice(diagnosis, probe, student_settings, teacher_only=student is None)
        inputs, shown_settings = _named_inputs([InputInfo(role, m.source, m.format, n_classes=n_classes, notes=m.notes)
                                                for role, m in models.items()] + data_inputs + config_input,
                                               student_settings, names)
        reports.append(Report(inputs=inputs, settings=shown_settings, class_info=class_info,
                              measurements=measurements, diagnosis=diagnosis, n_classes=n_classes,
                              coverage=tuple(coverage_of(s) for s in student_summaries),
                              example_inputs=_listed_inputs(measurements, datasets, loaded_teacher,
                                                             trust_remote_code=options.trust_remote_code),
                              models=tuple(models), probe=probe))
    return reports, summaries


_KINDS = {"torch.export": "a torch.export program", "torchscript": "a TorchScript program", "logits": "precomputed logits",
          "pickled-module": "a pickled model", "module": "an nn.Module", "hf-causal-lm": "a Hugging Face model",
          "hf-sequence-classifier": "a Hugging Face model"}  # what a LoadedModel's format is, in words


def _check_options(options: Any) -> None:
    """``options`` is an InspectOptions (a dict would fail far from here, on its first attribute)."""
    if not isinstance(options, InspectOptions):
        hint = ": build one from it, InspectOptions(**options)" if isinstance(options, Mapping) else ""
        raise KddiagError(f"options: expected a kddiag.options.InspectOptions{hint}; got {type(options).__name__}")


def _check_baseline_options(baseline: Any, options: InspectOptions) -> None:
    """The baseline's options without a baseline do nothing: refused, not ignored."""
    if baseline is None:
        for given, option in (("baseline" in options.ema, "--ema baseline"),
                              (options.baseline_arch is not None, "--baseline-arch")):
            if given:
                raise KddiagError(f"{option} was given but no baseline: give the baseline checkpoint (--baseline), "
                                  f"or leave the option out")


def _check_distinct(students: tuple[Any, ...]) -> None:
    """Each student once: one file under two spellings (or links), or one object twice, is refused."""
    seen: dict[Any, int] = {}
    for k, student in enumerate(students):
        if isinstance(student, (str, os.PathLike)):
            try:
                stat = os.stat(student)
                key: Any = ("file", stat.st_dev, stat.st_ino)
            except OSError:  # missing: named by the loader
                key = ("path", os.path.abspath(student))
        else:
            key = ("object", id(student.module if isinstance(student, LoadedModel) else student))
        if key in seen:
            what = (f"file ('{students[seen[key]]}' and '{student}')" if key[0] != "object"
                    else "model (one object given twice)")
            raise KddiagError(f"students {seen[key] + 1} and {k + 1} are the same {what}: give each student once")
        seen[key] = k


def _check_options_used(options: InspectOptions, teacher: LoadedModel, students: tuple[LoadedModel | None, ...],
                        baseline: LoadedModel | None, *, probing: bool) -> None:
    """Options that would do nothing for the models loaded (an architecture for a model that brings its own,
    a text length without a Hugging Face teacher) are refused, not ignored."""
    given = [s for s in students if s is not None]
    for option, models, used in (("--teacher-arch", [teacher], True), ("--student-arch", given, not probing),
                                 ("--baseline-arch", [baseline] if baseline is not None else [], True)):
        spec = getattr(options, option[2:].replace("-", "_"))
        if spec is None or not used or not models or any(m.format == "state_dict" for m in models):
            continue
        role = option[2:].removesuffix("-arch")
        model = models[0]
        raise KddiagError(f"{option} builds the model a state dict belongs to, but the {role} "
                          f"'{model.source}' is {_KINDS.get(model.format, model.format)}, which brings its own "
                          f"architecture: leave the option out")
    if options.max_length is not None and not teacher.format.startswith("hf-"):
        raise KddiagError(f"--max-length sets the tokens per sequence of text data read with a Hugging Face "
                          f"teacher's tokenizer, but the teacher '{teacher.source}' is "
                          f"{_KINDS.get(teacher.format, 'a ' + teacher.format.replace('_', ' '))}, so no text is "
                          f"tokenized: leave the option out")


def shown_path(source: Any, *, full: bool = False) -> Any:
    """A file or folder as reports name it: relative to the working directory, or with ``full`` absolute.
    Anything else (a built-in data set's name, a missing file, an object) is returned as given."""
    if not isinstance(source, (str, os.PathLike)):
        return source
    text = os.fspath(source)
    if not isinstance(text, str) or not os.path.exists(text):
        return source
    if full:
        return os.path.abspath(text)
    if not os.path.isabs(text):
        return source
    try:
        relative = os.path.relpath(text)
        same = os.path.samefile(relative, text)  # '..' across a symbolic link would lead elsewhere
    except (OSError, ValueError):  # no working directory; another drive (Windows)
        return source
    return relative if same else source


def _path_names(sources: Sequence[Any], *, full: bool) -> dict[str, str]:
    """How reports name the files given, where that differs from how they were given: {given: shown}."""
    names = {}
    for source in sources:
        if isinstance(source, (str, os.PathLike)) and isinstance(os.fspath(source), str):
            shown = shown_path(os.fspath(source), full=full)
            if shown != os.fspath(source):
                names[os.fspath(source)] = shown
    return names


def _named_inputs(inputs: Sequence[InputInfo], settings: Settings, names: dict[str, str]
                  ) -> tuple[tuple[InputInfo, ...], Settings]:
    """The inputs and settings with each file named as reports name it (``names``, :func:`_path_names`): the
    paths, and the quoted paths in notes ('tokenized with the tokenizer in '…'')."""
    if not names:
        return tuple(inputs), settings

    def text(value: str | None) -> str | None:
        for given in sorted(names, key=len, reverse=True):
            value = value and value.replace(f"'{given}'", f"'{names[given]}'")
        return value

    inputs = tuple(dataclasses.replace(info, path=names.get(info.path, info.path), preprocessing=text(info.preprocessing),
                                       notes=tuple(map(text, info.notes))) for info in inputs)
    settings = dataclasses.replace(settings, **{name: dataclasses.replace(setting, path=names.get(setting.path,
                                                                                                 setting.path))
                                                for name, setting in (("temperature", settings.temperature),
                                                                      ("alpha", settings.alpha))})
    return inputs, settings


def _probe(teacher: LoadedModel, student: LoadedModel, datasets: dict[str, Dataset], measurements, diagnosis,
           settings: Settings, options: InspectOptions, *, device: str | None, world_size: int):
    """Remedy probes of the student (:mod:`kddiag.probe`): the fixed candidates and every finding's remedy,
    trained on the transfer set and scored on the eval set; under torchrun rank 0 probes alone."""
    from kddiag.diagnosis.reading import first
    from kddiag.metrics.whatif import TEMPERATURES
    from kddiag.probe import candidates_for, run_probes

    fitted = first(measurements.universe, lambda u: u.teacher.fitted_temperature, (EVAL,))
    remedies = tuple((f.id, f.remedy.temperature, f.remedy.alpha) for f in diagnosis.findings if f.remedy is not None)
    candidates = candidates_for(settings, grid=TEMPERATURES, fitted_temperature=fitted.value if fitted.ok else None,
                                remedies=remedies)
    where = None if world_size == 1 else f"rank 0 alone (of {world_size}), on its device"
    return run_probes(teacher, student, transfer=datasets.get(TRANSFER), held_out=datasets.get(EVAL),
                      candidates=candidates, options=options.probe, device=device, progress=options.progress,
                      where=where)


def _token_strata(datasets: dict[str, Dataset]) -> dict[str, dict[str, np.ndarray]]:
    """For the sets whose examples are token positions: each example's frequency bucket (by its target
    token's rank in the transfer set's labels, else the set's own) and position bucket."""
    from kddiag.metrics.strata import FREQUENCY, POSITION, frequency_buckets, position_buckets

    token = {name: ds for name, ds in datasets.items() if isinstance(ds.x, TokenInputs) and ds.x.per_position}
    if not token:
        return {}
    size = max(int(ds.labels.max()) for ds in datasets.values()) + 1
    reference = datasets.get(TRANSFER, next(iter(datasets.values())))
    counts = np.bincount(reference.labels, minlength=size)
    return {name: {FREQUENCY: frequency_buckets(ds.labels, counts),
                   POSITION: position_buckets(ds.x.target_positions())} for name, ds in token.items()}


def _student_names(students: Sequence[Any] | Mapping[str, Any], *, full: bool = False) -> tuple[str, ...]:
    """Each student's name: the mapping's keys, else its file's name without suffix (made unique by its folder,
    named as reports name files: :func:`shown_path`), else 'student k'."""
    if isinstance(students, Mapping):
        names = tuple(str(name) for name in students)
    else:
        names = tuple(Path(s).stem if isinstance(s, (str, os.PathLike)) else f"student {k + 1}"
                      for k, s in enumerate(students))
        if len(set(names)) < len(names):  # same file names in different folders: keep the parent
            names = tuple(str(Path(shown_path(s, full=full)).with_suffix("")) if isinstance(s, (str, os.PathLike))
                          else name for s, name in zip(students, names))
    if len(set(names)) < len(names):
        names = tuple(f"{name} ({k + 1})" for k, name in enumerate(names))
    return names


def _listed_inputs(measurements, datasets: dict[str, Dataset], teacher: LoadedModel, *,
                   trust_remote_code: bool = False) -> dict[str, dict[int, Any]]:
    """The inputs of the examples the report lists (the teacher's hardest), per set: numpy arrays, or for
    token positions their decoded context (:func:`kddiag.readers.text.token_contexts`)."""
    listed = {}
    for record in measurements.instance.sets():
        dataset = datasets.get(record.dataset)
        examples = record.hardest_examples.value or ()
        if dataset is None or dataset.x is None or not examples:
            continue
        if isinstance(dataset.x, TokenInputs):
            from kddiag.readers.text import token_contexts

            listed[record.dataset] = token_contexts(dataset, [item.index for item in examples],
                                                    teacher.metadata.get("tokenizer_dir"),
                                                    trust_remote_code=trust_remote_code)
        else:
            listed[record.dataset] = {item.index: np.asarray(dataset.x[item.index]) for item in examples}
    return listed


def _n_classes(summaries: list, datasets: dict[str, Dataset]) -> int:
    """The class count every set shares."""
    counts = {s.name: s.n_classes for s in summaries}
    if len(set(counts.values())) > 1:
        (first, c1), (second, c2) = counts.items()
        raise KddiagError(f"the models give {c2} classes on the {second} set ('{datasets[second].name}') but {c1} "
                          f"on the {first} set ('{datasets[first].name}'); all sets must share the classes")
    return next(iter(counts.values()))


def write_outputs(report: Report, out_dir: str | os.PathLike, *, arrays: bool = False) -> dict[str, Path]:
    """Render ``report.json`` and ``report.html`` (and with ``arrays`` the class-by-class matrices as
    ``report-arrays.npz``) in memory, then write them into ``out_dir``, all or nothing."""
    from kddiag.report.html import render_html
    from kddiag.report.json import check_writable, render_arrays, render_json

    out_dir = check_writable(out_dir)
    rendered = {"json": ("report.json", render_json(report)), "html": ("report.html", render_html(report))}
    if arrays:
        rendered["arrays"] = ("report-arrays.npz", render_arrays(report))
    return _write(out_dir, rendered)


def write_comparison(comparison: Comparison, out_dir: str | os.PathLike) -> dict[str, Path]:
    """Render a comparison's ``report.json`` and ``report.html`` in memory, then write them into ``out_dir``,
    all or nothing."""
    from kddiag.report.comparison import render_comparison_html, render_comparison_json
    from kddiag.report.json import check_writable

    out_dir = check_writable(out_dir)
    return _write(out_dir, {"json": ("report.json", render_comparison_json(comparison)),
                            "html": ("report.html", render_comparison_html(comparison))})


def _write(out_dir: Path, rendered: dict[str, tuple[str, str | bytes]]) -> dict[str, Path]:
    """The report files into ``out_dir``, together or not at all (:func:`kddiag.report.json.write_report_files`)."""
    from kddiag.report.json import REPORT_FILES, write_report_files

    try:
        written = write_report_files(out_dir, dict(rendered.values()), replaces=REPORT_FILES)
    except OSError as error:
        raise KddiagError(f"--out '{out_dir}': cannot write the report ({error.strerror or error})") from None
    return dict(zip(rendered, written))


def as_model(source: Any, role: str, arch: str | None, options: InspectOptions) -> LoadedModel:
    if isinstance(source, LoadedModel):
        return source
    if isinstance(source, (str, os.PathLike)):
        from kddiag.loading import load_model

        return load_model(source, arch=arch, trust_pickle=options.trust_pickle, trust_program=options.trust_program,
                          role=role, ema=role in options.ema, trust_remote_code=options.trust_remote_code)
    import torch

    if isinstance(source, torch.nn.Module):
        return LoadedModel(source="<in-memory>", format="module", module=source)
    raise KddiagError(f"{role}: expected a checkpoint path, an nn.Module or a LoadedModel; "
                      f"got {type(source).__name__}")


def _vocabulary_mismatches(teacher: LoadedModel, students: tuple[LoadedModel | None, ...], *,
                           trust_remote_code: bool = False) -> dict[int, Any]:
    """The students whose tokenizer differs from the teacher's (Hugging Face directories with tokenizers),
    with how: read before any forward pass."""
    from kddiag.vocabulary import compare_vocabularies, read_vocabulary

    if not teacher.metadata.get("tokenizer_dir"):
        return {}
    found = {}
    for k, student in enumerate(students):
        if student is None or not student.metadata.get("tokenizer_dir"):
            continue
        comparison = compare_vocabularies(
            read_vocabulary(teacher.metadata["tokenizer_dir"], "teacher", trust_remote_code=trust_remote_code),
            read_vocabulary(student.metadata["tokenizer_dir"], "student", trust_remote_code=trust_remote_code))
        if not comparison.same:
            found[k] = comparison
    return found


def _mismatch_reports(teacher: LoadedModel, students, baseline, settings, mismatched: dict,
                      names: dict[str, str]) -> list[Report]:
    """Reports of students whose vocabulary differs from the teacher's: that finding, nothing measured."""
    from kddiag.diagnosis.engine import vocabulary_mismatch

    reports = []
    for k, student in enumerate(students):
        models = {role: m for role, m in (("teacher", teacher), ("student", student), ("baseline", baseline))
                  if m is not None}
        sizes = {role: m.metadata.get("vocab_size") for role, m in models.items()}
        inputs, shown_settings = _named_inputs([InputInfo(role, m.source, m.format, n_classes=sizes[role],
                                                          notes=m.notes) for role, m in models.items()],
                                               settings[k], names)
        reports.append(Report(inputs=inputs, settings=shown_settings, class_info=ClassInfo(),
                              measurements=Measurements(), diagnosis=vocabulary_mismatch(mismatched[k]),
                              n_classes=int(sizes["teacher"] or 0), models=tuple(models)))
    return reports


def _class_info(given: ClassInfo | None, path: str | None, datasets: dict[str, Dataset],
                n_classes: int) -> ClassInfo:
    """Class names/groups from --classes, else from the data set; checked against the class count."""
    if given is not None:
        info, origin = given, f"--classes '{path}'"
    else:
        info = next((ds.class_info for ds in datasets.values()
                     if ds.class_info.names or ds.class_info.groups), ClassInfo())
        origin = "the data set's class information"
    for field_name in ("names", "groups"):
        values = getattr(info, field_name)
        if values is not None and len(values) != n_classes:
            raise KddiagError(f"{origin} has {len(values)} class {field_name} but the models "
                              f"have {n_classes} classes")
    return info


def settings_of(options: InspectOptions, *models: LoadedModel, temperature: float | None = None,
                alpha: float | None = None, config: RunConfig | None = None) -> Settings:
    """Each setting from, highest precedence first: as given (``temperature``/``alpha``, else the options),
    the training run's ``config`` (:func:`kddiag.configs.load_config`), the student's (then teacher's)
    checkpoint, else guessed. A value given and in the config must agree: a differing one is an error,
    never silently preferred."""
    def pick(name: str, given: float | None, default: float) -> Setting:
        in_config = None if config is None else getattr(config, name)
        if given is not None:
            if in_config is not None and not math.isclose(float(given), in_config, rel_tol=1e-6, abs_tol=1e-9):
                raise KddiagError(f"--{name} {float(given):g} disagrees with --config '{config.path}' "
                                  f"({config.keys.get(name, name)}: {in_config:.6g}): give the value once, or make "
                                  f"them agree")
            return Setting(float(given), "cli")
        if in_config is not None:
            return Setting(float(in_config), "config", path=config.path)
        for model in models:
            if model.metadata.get(name) is not None:
                return Setting(float(model.metadata[name]), "checkpoint", path=model.source)
        return Setting(default, "guessed")

    return Settings(temperature=pick("temperature", options.temperature if temperature is None else temperature,
                                     DEFAULT_TEMPERATURE),
                    alpha=pick("alpha", options.alpha if alpha is None else alpha, DEFAULT_ALPHA))


def _run_configs(options: InspectOptions, configs: Sequence[Any] | None, n_students: int) -> list[RunConfig | None]:
    """Each student's training-run config (``configs``, one per student as :func:`compare` checked, else
    ``options.config`` for all), read once per file."""
    from kddiag.configs import load_config

    paths = list(configs) if configs is not None else [options.config] * n_students
    read: dict[Any, RunConfig] = {}
    for path in paths:
        key = os.fspath(path) if isinstance(path, (str, os.PathLike)) else id(path)  # load_config refuses others
        if path is not None and key not in read:
            read[key] = load_config(path)
    return [None if path is None else read[os.fspath(path)] for path in paths]


def _config_input(config: RunConfig, settings: Settings, models: Sequence[LoadedModel]) -> InputInfo:
    """The config file as a report input: how τ/α were read from it, and a checkpoint's other value it overrode."""
    notes = list(config.notes)
    for name, symbol in (("temperature", "τ"), ("alpha", "α")):
        setting = getattr(settings, name)
        stored = next((m for m in models if m.metadata.get(name) is not None), None)
        if setting.source == "config" and stored is not None and not math.isclose(
                float(stored.metadata[name]), setting.value, rel_tol=1e-6, abs_tol=1e-9):
            notes.append(f"settings: the config's {symbol} = {setting.value:g} is used; the checkpoint "
                         f"'{stored.source}' stores {symbol} = {float(stored.metadata[name]):g}")
    return InputInfo("config", config.path, config.framework, notes=tuple(notes))


def _input_stats(x: Any) -> dict[str, Any]:
    """The range and mean of real-valued inputs, so a report can tell unnormalized images; {} for token ids."""
    import torch

    if x is None or isinstance(x, TokenInputs):
        return {}
    x = torch.as_tensor(x)
    if not x.is_floating_point() or x.numel() == 0:
        return {}
    low, high = torch.aminmax(x)
    return {"input_range": (float(low), float(high)), "input_mean": float(x.mean())}  # cascade sum: accurate


def _dataset_format(name: str) -> str:
    suffix = Path(name).suffix.lower()
    return suffix.lstrip(".") if suffix in (".pt", ".npz", ".pth") else "builtin"
