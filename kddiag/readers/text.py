"""Text data for token-level distillation: text or token ids in, :class:`~kddiag.inputs.TokenInputs` out.

Formats (:func:`load_text_dataset`):

- ``.jsonl``: one JSON object per line with ``text`` (a string) and, for sequence classification,
  ``label`` (an integer class id ≥ 0, or a class name: names map to the ids the model's config gives them
  in ``id2label``, else, when it names no classes, to ids in sorted order). Blank lines are skipped.
- ``.txt``: one text per non-blank line (causal language models only: a classifier needs labels).
- ``.pt`` (read with ``weights_only=True``) / ``.npz`` (never unpickled): pre-tokenized ``input_ids``
  (n, L), optional ``attention_mask`` (n, L) (default all ones) and ``labels``: for a causal LM (n, L)
  aligned with ``input_ids`` as Hugging Face does (the model shifts them; -100 ignored; default
  ``input_ids``), for a classifier (n,) class ids.
- A directory written by Hugging Face ``datasets``' ``save_to_disk`` (one split), with columns
  ``text`` [+ ``label``] or ``input_ids`` [+ ``attention_mask``, ``labels``]; needs ``datasets``.

Text is tokenized with the teacher's tokenizer, special tokens added as the tokenizer adds them by
default, truncated to ``max_length`` and right-padded to the longest sequence of the set.

For a causal LM the example at position t of a sequence is the prediction of the token at t + 1:
``targets[:, t] = labels[:, t + 1]``, IGNORE_INDEX (-100) at the last position, where position t or
t + 1 is padding, and where ``labels[:, t + 1]`` is -100. ``Dataset.labels`` are the targets that are
not -100, row-major.
"""
from __future__ import annotations

import contextlib
import json
import numbers
import os
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np

from kddiag.errors import KddiagError, is_rust_panic, native_stderr_silenced, printable
from kddiag.files import check_entries, check_regular, kind_of, open_regular, read_json
from kddiag.inputs import IGNORE_INDEX, ClassInfo, Dataset, TokenInputs

__all__ = ["TASKS", "TEXT_FORMATS", "load_text_dataset", "next_token_targets"]

CAUSAL_LM_TASK, SEQUENCE_CLASSIFICATION_TASK = TASKS = ("causal-lm", "sequence-classification")
TEXT_FORMATS = (".jsonl", ".txt", ".pt", ".pth", ".npz")  # and a Hugging Face datasets directory
DEFAULT_MAX_LENGTH = 512  # when the tokenizer states no usable model_max_length
MAX_SANE_MODEL_MAX_LENGTH = 8192  # above this a tokenizer's model_max_length is a placeholder (often 1e30)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "vocab.txt", "spiece.model",
                   "tokenizer.model", "sentencepiece.bpe.model")
_HF_MARKERS = ("dataset_info.json", "state.json")  # files save_to_disk writes in one split's directory
_HF_DICT_MARKER = "dataset_dict.json"  # ... and in a DatasetDict's directory
_PRETOKENIZED_HINT = "give pre-tokenized data instead (.pt or .npz with 'input_ids')"
MAX_TEXT_LINES = 1_000_000  # lines read from a .txt/.jsonl file, blank ones included (3 million short ones
# took 5 GB to tokenize: transformers holds every line's ids as Python lists)
MAX_LINE_CHARS = 1 << 20  # characters in one line: far more than any max_length keeps (8192 tokens)
MAX_DATASET_BYTES = 1 << 30  # column data of a datasets folder, decompressed: far more than an evaluation set
MAX_STATE_BYTES = 1 << 20  # a datasets folder's state.json: save_to_disk writes a few hundred bytes
MAX_DATASET_INFO_BYTES = 16 << 20  # its dataset_info.json: a few KiB, ImageNet-21k's class names about 1 MB


def load_text_dataset(path: str | Path, *, role: str, task: str, tokenizer_dir: str | Path | None = None,
                      max_length: int | None = None, trust_remote_code: bool = False,
                      id2label: Mapping[int, str] | None = None, max_positions: int | None = None) -> Dataset:
    """Read text or token ids for a Hugging Face model as a :class:`Dataset` whose ``x`` is TokenInputs.

    ``task``: 'causal-lm' (examples are target positions, labels the next tokens) or
    'sequence-classification' (examples are sequences, labels their class ids). ``tokenizer_dir``: the
    teacher's directory, whose tokenizer turns text into ids and bounds pre-tokenized ids to its
    vocabulary. ``max_length``: tokens kept per sequence; None: the tokenizer's ``model_max_length``
    when it is at most 8192, else 512, and at most ``max_positions`` (the models' position table; pre-tokenized
    data: not truncated). ``role`` ('data' or
    'transfer-data') names the option in errors. A tokenizer directory that names code to run is refused
    unless ``trust_remote_code`` (:func:`kddiag.loading.hf.vet_hf_directory`). Text files are read line by
    line, at most MAX_TEXT_LINES lines of at most MAX_LINE_CHARS characters. ``id2label``: the classifier's
    class names by id (its config's); class names in the data map to those ids (:func:`_model_class_ids`).
    Text in which no word is in the tokenizer's vocabulary is refused: not enough data.

    >>> load_text_dataset("val.jsonl", role="data", task="causal-lm", tokenizer_dir="gpt2/").x.input_ids.shape
    torch.Size([100, 37])  # doctest: +SKIP
    """
    where = f"--{role} '{path}'"
    if task not in TASKS:
        raise KddiagError(f"{where}: the task must be one of {', '.join(TASKS)}; got {task!r}")
    if max_length is not None and (isinstance(max_length, bool) or not isinstance(max_length, numbers.Integral)
                                   or max_length < 1):
        raise KddiagError(f"{where}: max_length must be a positive integer; got {max_length!r}")
    path = Path(path)
    if path.is_dir():
        return _load_hf_datasets(path, where, task, tokenizer_dir, max_length, trust_remote_code=trust_remote_code,
                                 id2label=id2label, max_positions=max_positions)
    if kind_of(path) == "missing":
        raise KddiagError(f"{where}: no such file or folder")
    check_regular(path, where)  # a FIFO, a device or a socket, named
    suffix = path.suffix.lower()
    if suffix not in TEXT_FORMATS:
        raise KddiagError(f"{where}: unknown text data format '{suffix or path.name}'; expected .jsonl, .txt, "
                          f".pt or .npz, or a directory written by Hugging Face datasets' save_to_disk")
    if path.stat().st_size == 0:
        raise KddiagError(f"{where}: the file is empty")
    if suffix in (".jsonl", ".txt"):
        if suffix == ".txt" and task == SEQUENCE_CLASSIFICATION_TASK:
            raise KddiagError(f"{where}: a .txt file holds no labels, which sequence classification needs; use "
                              f".jsonl with 'text' and 'label' on each line")
        texts, labels, names = (_read_jsonl(path, where, task) if suffix == ".jsonl"
                                else (_read_txt(path, where), None, None))
        return _from_texts(texts, labels, names, name=str(path), where=where, task=task,
                           tokenizer_dir=tokenizer_dir, max_length=max_length, format=suffix.lstrip("."),
                           trust_remote_code=trust_remote_code, id2label=id2label, named_labels=names is not None,
                           max_positions=max_positions)
    columns = _read_npz(path, where) if suffix == ".npz" else _read_pt(path, where)
    return _from_columns(columns, name=str(path), where=where, task=task, tokenizer_dir=tokenizer_dir,
                         max_length=max_length, format="npz" if suffix == ".npz" else "pt",
                         trust_remote_code=trust_remote_code)


# --- reading files ----------------------------------------------------------------------------------

def _read_jsonl(path: Path, where: str, task: str) -> tuple[list[str], list | None, tuple[str, ...] | None]:
    """Texts and, for classification, class ids (and the class names when labels are strings)."""
    texts, labels, places = [], [], []
    for number, line in _lines(path, where):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise KddiagError(f"{where}: line {number} is not valid JSON ({error.msg}, column {error.colno})") from None
        except (ValueError, RecursionError) as error:  # an integer of more digits than Python converts; nesting
            raise KddiagError(f"{where}: line {number} is not usable JSON ({_one_line(error)})") from None
        if not isinstance(record, dict):
            raise KddiagError(f"{where}: line {number} must be a JSON object with 'text'; got "
                              f"{type(record).__name__}")
        if "text" not in record:
            raise KddiagError(f"{where}: line {number} has no 'text' field (fields: "
                              f"{', '.join(map(repr, record)) or 'none'})")
        if not isinstance(record["text"], str):
            raise KddiagError(f"{where}: line {number}: 'text' must be a string; got {type(record['text']).__name__}")
        texts.append(record["text"])
        places.append(f"line {number}")
        if task == SEQUENCE_CLASSIFICATION_TASK:
            if "label" not in record:
                raise KddiagError(f"{where}: line {number} has no 'label' field; sequence classification needs "
                                  f"an integer class id (or a class name) on each line")
            labels.append(record["label"])
    if not texts:
        raise KddiagError(f"{where}: no examples (only blank lines)")
    if task != SEQUENCE_CLASSIFICATION_TASK:
        return texts, None, None
    ids, names = _class_ids(labels, places, where)
    return texts, ids, names


def _class_ids(labels: list, places: list[str], where: str) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """Integer class ids ≥ 0 as given, or class names mapped to ids in sorted order (then the names).
    ``places``: where each label is ('line 3', 'row 2'), for errors."""
    named = isinstance(labels[0], str)
    for label, place in zip(labels, places):
        if named and not isinstance(label, str):
            raise KddiagError(f"{where}: {place}: label {json.dumps(label)} is not a class name, but "
                              f"{places[0]}'s label is; give every label as an integer or every label as a name")
        if not named:
            if isinstance(label, str):
                raise KddiagError(f"{where}: {place}: label {json.dumps(label)} is a class name, but "
                                  f"{places[0]}'s label is an integer; give every label as an integer or every "
                                  f"label as a name")
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, numbers.Integral):
                raise KddiagError(f"{where}: {place}: the label must be an integer class id; got "
                                  f"{json.dumps(label)}")
            if label < 0:
                raise KddiagError(f"{where}: {place}: the label must be a class id >= 0; got {label}")
    if not named:
        return np.asarray([int(label) for label in labels], dtype=np.int64), None
    names = tuple(sorted(set(labels)))
    index = {name: k for k, name in enumerate(names)}
    return np.asarray([index[label] for label in labels], dtype=np.int64), names


def _read_txt(path: Path, where: str) -> list[str]:
    texts = [line for _, line in _lines(path, where) if line.strip()]
    if not texts:
        raise KddiagError(f"{where}: no examples (only blank lines)")
    return texts


def _lines(path: Path, where: str) -> Iterator[tuple[int, str]]:
    """(line number from 1, line without its line break); a UTF-8 byte-order mark is dropped. At most
    MAX_TEXT_LINES lines of at most MAX_LINE_CHARS characters: refused as soon as one is past either."""
    import io

    try:
        with io.TextIOWrapper(open_regular(path, where), encoding="utf-8-sig", newline="") as handle:
            for number in range(1, MAX_TEXT_LINES + 2):
                line = handle.readline(MAX_LINE_CHARS + 2)  # + the line break, which may be '\r\n'
                if not line:
                    return
                if number > MAX_TEXT_LINES:
                    raise KddiagError(f"{where}: more than {MAX_TEXT_LINES:,} lines; kddiag reads at most that "
                                      f"many (split the file, or give a sample)")
                text = line.rstrip("\r\n")
                if len(text) > MAX_LINE_CHARS:
                    raise KddiagError(f"{where}: line {number} is longer than {MAX_LINE_CHARS:,} characters; "
                                      f"kddiag reads lines of at most that length")
                yield number, text
    except UnicodeDecodeError as error:
        raise KddiagError(f"{where}: not UTF-8 text (byte {error.start} of the file cannot be decoded)") from None


def _read_pt(path: Path, where: str) -> dict:
    import re

    import torch

    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        found = re.search(r"Unsupported global: GLOBAL ([\w.]+)", str(error))
        if found:  # the weights-only unpickler met an object it does not allow
            raise KddiagError(f"{where}: not a plain tensor file: it holds pickled Python objects ({found.group(1)}), "
                              f"which kddiag never loads; save a dict of tensors ('input_ids', optionally "
                              f"'attention_mask' and 'labels') with torch.save") from None
        # torch's own message advises weights_only=False or names pickle opcodes: not the user's concern
        raise KddiagError(f"{where}: not a readable tensor file (corrupt, truncated or not written by torch.save); "
                          f"expected a dict of tensors "
                          f"'input_ids', optionally 'attention_mask' and 'labels', saved by torch.save") from None
    if not isinstance(content, dict):
        raise KddiagError(f"{where}: expected a dict with 'input_ids' (and optionally 'attention_mask' and 'labels'); "
                          f"got {type(content).__name__}")
    from kddiag.loading.logits import check_stored_tensor  # zero-stride views: before anything materializes

    for key, value in content.items():
        check_stored_tensor(value, where, printable(str(key))[:80])
    return content


def _read_npz(path: Path, where: str) -> dict:
    with open(path, "rb") as handle:
        if not handle.read(4).startswith((b"PK\x03\x04", b"PK\x05\x06")):
            raise KddiagError(f"{where}: not a .npz file (a zip of .npy arrays): corrupt, truncated or another format")
    from kddiag.loading.logits import check_npz_sizes

    check_npz_sizes(path, where)  # from the headers, before anything is inflated
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except ValueError as error:
        if "pickle" in str(error) or "Python objects" in str(error):
            raise KddiagError(f"{where}: holds object arrays (Python objects, or sequences of different lengths), "
                              f"which kddiag never unpickles; pad the sequences and save integer arrays") from None
        raise KddiagError(f"{where}: not a readable .npz file ({_one_line(error)})") from None
    except Exception as error:
        raise KddiagError(f"{where}: not a readable .npz file ({_one_line(error)})") from None


def _load_hf_datasets(path: Path, where: str, task: str, tokenizer_dir, max_length, *,
                      trust_remote_code: bool, id2label: Mapping[int, str] | None = None,
                      max_positions: int | None = None) -> Dataset:
    """One split saved by Hugging Face ``datasets``: text columns or token columns (ragged rows are padded)."""
    table = _read_hf_split(path, where)
    columns = list(table.column_names)
    if "input_ids" in columns:
        # columns as lists of rows (recent datasets versions return lazy Column objects)
        content = {key: list(table[key]) for key in ("input_ids", "attention_mask", "labels") if key in columns}
        if task == SEQUENCE_CLASSIFICATION_TASK and "labels" not in columns and "label" in columns:
            content["labels"] = list(table["label"])
        return _from_columns(content, name=str(path), where=where, task=task, tokenizer_dir=tokenizer_dir,
                             max_length=max_length, format="hf-datasets", ragged_ok=True,
                             trust_remote_code=trust_remote_code)
    texts = _hf_texts(table, columns, where)
    labels = names = None
    named = False
    if task == SEQUENCE_CLASSIFICATION_TASK:
        labels, names, named = _hf_labels(table, columns, len(texts), where)
    return _from_texts(texts, labels, names, name=str(path), where=where, task=task, tokenizer_dir=tokenizer_dir,
                       max_length=max_length, format="hf-datasets", trust_remote_code=trust_remote_code,
                       id2label=id2label, named_labels=named, max_positions=max_positions)


def _read_hf_split(path: Path, where: str):
    """The ``datasets.Dataset`` that ``save_to_disk`` wrote to ``path``: one split, its Arrow sizes checked."""
    check_entries(path, where)  # datasets opens its files by name: a FIFO among them would block it
    if (path / _HF_DICT_MARKER).is_file():
        splits = sorted(p.name for p in path.iterdir() if p.is_dir())
        raise KddiagError(f"{where}: a DatasetDict with several splits ({', '.join(splits) or 'none'}); give one "
                          f"split's directory, e.g. '{path / (splits[0] if splits else 'validation')}'")
    if not any((path / marker).is_file() for marker in _HF_MARKERS):
        raise KddiagError(f"{where}: a folder, but not one written by Hugging Face datasets' save_to_disk (no "
                          f"{' or '.join(_HF_MARKERS)}); give a .jsonl, .txt, .pt or .npz file or such a folder")
    try:
        import datasets
    except ImportError:
        raise KddiagError(f"{where}: reading a Hugging Face datasets folder needs the datasets package: "
                          f"pip install datasets") from None
    _check_arrow_sizes(path, where)
    try:
        with _quiet():
            table = datasets.load_from_disk(str(path))
    except Exception as error:
        raise KddiagError(f"{where}: not a readable Hugging Face datasets folder ({_one_line(error)})") from None
    if isinstance(table, datasets.DatasetDict):
        raise KddiagError(f"{where}: a DatasetDict with splits {', '.join(table)}; give one split's directory")
    return table


def _hf_texts(table, columns: list[str], where: str) -> list[str]:
    """The 'text' column: at least one row, every row a string."""
    if "text" not in columns:
        raise KddiagError(f"{where}: no 'text' or 'input_ids' column (columns: {', '.join(columns) or 'none'})")
    texts = list(table["text"])
    if not texts:
        raise KddiagError(f"{where}: the data set is empty (0 rows)")
    bad = next((i for i, t in enumerate(texts) if not isinstance(t, str)), None)
    if bad is not None:
        raise KddiagError(f"{where}: row {bad}: 'text' must be a string; got {type(texts[bad]).__name__}")
    return texts


def _hf_labels(table, columns: list[str], n_rows: int, where: str) -> tuple[np.ndarray, tuple[str, ...] | None, bool]:
    """The 'label' column as class ids, the class names, and whether the labels were names themselves
    (else the names, if any, are those of a ClassLabel column)."""
    if "label" not in columns:
        raise KddiagError(f"{where}: no 'label' column, which sequence classification needs (columns: "
                          f"{', '.join(columns)})")
    labels, names = _class_ids(list(table["label"]), [f"row {i}" for i in range(n_rows)], where)
    named = names is not None
    feature = getattr(table, "features", {}).get("label")
    if names is None and getattr(feature, "names", None):  # a ClassLabel column: ids with names
        names = tuple(str(n) for n in feature.names)
    return labels, names, named


def _check_arrow_sizes(path: Path, where: str) -> None:
    """Refuse a datasets folder whose Arrow files hold more than MAX_TEXT_LINES rows or MAX_DATASET_BYTES of
    column data, read from the stream's message headers before anything is decompressed or materialized:
    an Arrow stream may compress its buffers (ZSTD turns gigabytes of text into megabytes). The files are
    those ``datasets.load_from_disk`` reads, whatever their names (:func:`_arrow_files`), and any ``*.arrow``."""
    files = _arrow_files(path, where)
    if not files:
        return
    import pyarrow as pa  # datasets' own dependency

    rows = size = 0
    for file in files:
        try:
            with pa.memory_map(str(file)) as source:
                for message in pa.ipc.MessageReader.open_stream(source):
                    batch_rows, batch_bytes = _arrow_message_sizes(message)
                    rows, size = rows + batch_rows, size + batch_bytes
                    if rows > MAX_TEXT_LINES or size > MAX_DATASET_BYTES:
                        raise KddiagError(
                            f"{where}: '{file.name}' holds more than " + (
                                f"{MAX_TEXT_LINES:,} rows" if rows > MAX_TEXT_LINES else
                                f"{MAX_DATASET_BYTES >> 20:,} MiB of data once decompressed") +
                            "; kddiag reads at most that (an evaluation set needs far less): give a sample")
        except KddiagError:
            raise
        except Exception as error:  # pyarrow's errors, a truncated stream, a header that is not Arrow's
            raise KddiagError(f"{where}: not a readable Hugging Face datasets folder ('{file.name}': "
                              f"{_one_line(error)})") from None


def _arrow_files(path: Path, where: str) -> list[Path]:
    """The files ``datasets.load_from_disk`` reads from one split's folder: those ``state.json`` names in
    ``_data_files`` (``[{"filename": "data-00000-of-00001.arrow"}, …]``, as ``save_to_disk`` writes it; each
    must be the plain name of a regular file in the folder), and every ``*.arrow`` file beside them. Any
    other ``_data_files`` is refused in one line: datasets would open whatever it names. ``state.json`` and
    ``dataset_info.json``, which datasets reads whole, are bounded too."""
    files = {p.name for p in path.glob("*.arrow")}
    info = path / "dataset_info.json"
    if os.path.lexists(info):
        with open_regular(info, f"{where}: dataset_info.json") as handle:
            if os.fstat(handle.fileno()).st_size > MAX_DATASET_INFO_BYTES:
                raise KddiagError(f"{where}: dataset_info.json is larger than {MAX_DATASET_INFO_BYTES >> 20} MiB; "
                                  f"save_to_disk writes a few KiB (class names included)")
    state = path / "state.json"
    if not os.path.lexists(state):
        return [path / name for name in sorted(files)]
    shown = f"{where}: state.json"
    content = read_json(state, shown, MAX_STATE_BYTES, "the few hundred bytes save_to_disk writes")
    if not isinstance(content, dict) or "_data_files" not in content:
        return [path / name for name in sorted(files)]  # datasets fails on it, reading nothing
    entries = content["_data_files"]
    if not (isinstance(entries, list) and entries and all(
            isinstance(e, dict) and isinstance(e.get("filename"), str) for e in entries)):
        raise KddiagError(f"{shown}: expected '_data_files' to list the split's Arrow files as "
                          f"[{{\"filename\": ...}}, …], as datasets' save_to_disk writes it")
    for entry in entries:
        name = entry["filename"]
        if Path(name).name != name or name.startswith(".") or "\\" in name:
            raise KddiagError(f"{shown} names the data file {_shown_text(name)}, not a file beside it")
        check_regular(path / name, f"{where}: '{name}' (named in state.json)")
        files.add(name)
    return [path / name for name in sorted(files)]


def _arrow_message_sizes(message) -> tuple[int, int]:
    """(rows, bytes once decompressed) of one Arrow IPC message: its RecordBatch header (also inside a
    DictionaryBatch), read from the message's flatbuffer; a compressed buffer states its decompressed length
    in its first 8 bytes."""
    meta = message.metadata.to_pybytes()

    def u32(at: int) -> int:
        return int.from_bytes(_slice(meta, at, 4), "little")

    def field(table: int, index: int) -> int | None:
        vtable = table - int.from_bytes(_slice(meta, table, 4), "little", signed=True)
        vsize = int.from_bytes(_slice(meta, vtable, 2), "little")
        if 4 + 2 * index + 2 > vsize:
            return None
        offset = int.from_bytes(_slice(meta, vtable + 4 + 2 * index, 2), "little")
        return table + offset if offset else None

    def table_at(table: int, index: int) -> int | None:
        at = field(table, index)
        return None if at is None else at + u32(at)

    root = u32(0)
    kind_at = field(root, 1)
    kind = meta[kind_at] if kind_at is not None else 0
    if kind not in (2, 3):  # Schema, Tensor, …: no rows; 2: DictionaryBatch, 3: RecordBatch
        return 0, 0
    batch = table_at(root, 2)
    if batch is not None and kind == 2:
        batch = table_at(batch, 1)
    if batch is None:
        return 0, 0
    length_at = field(batch, 0)
    rows = int.from_bytes(_slice(meta, length_at, 8), "little", signed=True) if length_at is not None else 0
    buffers = table_at(batch, 2)
    compressed = field(batch, 3) is not None
    body = message.body
    total = 0
    for i in range(u32(buffers) if buffers is not None else 0):
        entry = buffers + 4 + 16 * i
        offset = int.from_bytes(_slice(meta, entry, 8), "little", signed=True)
        length = int.from_bytes(_slice(meta, entry + 8, 8), "little", signed=True)
        if offset < 0 or length < 0 or body is None or offset + length > body.size:
            raise ValueError("a buffer outside the message body")
        if compressed and length >= 8:
            stated = int.from_bytes(body.slice(offset, 8).to_pybytes(), "little", signed=True)
            total += length - 8 if stated == -1 else max(stated, 0)
        else:
            total += length
    return (rows if kind == 3 else 0), total


def _slice(data: bytes, at: int, n: int) -> bytes:
    if at < 0 or at + n > len(data):
        raise ValueError("a corrupt Arrow message header")
    return data[at:at + n]


# --- from text --------------------------------------------------------------------------------------

def _max_length(tokenizer, given: int | None, positions: int | None, where: str) -> tuple[int, str]:
    """Tokens kept per sequence and a note saying why: ``given``, else the tokenizer's ``model_max_length``
    (when at most MAX_SANE_MODEL_MAX_LENGTH), else DEFAULT_MAX_LENGTH; never more than ``positions``, the
    models' position table (a longer sequence fails inside the model with an index error)."""
    if given is not None:
        if positions is not None and given > positions:
            raise KddiagError(f"{where}: --max-length {given} is more tokens than the models have positions "
                              f"({positions}, n_positions/max_position_embeddings in config.json)")
        return given, f"max_length {given}"
    stated = getattr(tokenizer, "model_max_length", None)
    sane = isinstance(stated, numbers.Integral) and 0 < stated <= MAX_SANE_MODEL_MAX_LENGTH
    length = int(stated) if sane else DEFAULT_MAX_LENGTH
    if positions is not None and length > positions:
        return positions, f"max_length {positions} (the models' positions, config.json)"
    return length, (f"max_length {length} (the tokenizer's model_max_length)" if sane else
                    f"max_length {length} (default: the tokenizer states no model_max_length ≤ "
                    f"{MAX_SANE_MODEL_MAX_LENGTH})")


def _from_texts(texts: list[str], labels, names, *, name: str, where: str, task: str, tokenizer_dir,
                max_length: int | None, format: str, trust_remote_code: bool,
                id2label: Mapping[int, str] | None = None, named_labels: bool = False,
                max_positions: int | None = None) -> Dataset:
    """``names``: the class names of ``labels`` (ids into them); ``named_labels``: the data gave names, not
    ids, so the ids are only their sorted order until the model's ``id2label`` places them."""
    class_note = None
    if task == SEQUENCE_CLASSIFICATION_TASK and names is not None:
        labels, names, class_note = _model_class_ids(labels, names, id2label, where, named=named_labels)
    if tokenizer_dir is None:
        raise KddiagError(f"{where}: text must be tokenized with the teacher's tokenizer, but the teacher has none "
                          f"(no Hugging Face directory with tokenizer files); {_PRETOKENIZED_HINT}")
    tokenizer = _load_tokenizer(tokenizer_dir, where, required=True, trust_remote_code=trust_remote_code)
    max_length, length_note = _max_length(tokenizer, max_length, max_positions, where)
    rows, n_truncated = _tokenize(tokenizer, texts, max_length, where)
    empty = next((i for i, row in enumerate(rows) if not row), None)
    if empty is not None:
        raise KddiagError(f"{where}: example {empty + 1} ({_shown_text(texts[empty])}) gives no tokens; every "
                          f"example needs at least one")
    pad_id, pad_note = _pad_id(tokenizer)
    input_ids, attention_mask = _padded(rows, pad_id)
    unknown_note = _check_known_words(tokenizer, input_ids, attention_mask, where)
    side = getattr(tokenizer, "truncation_side", "right")
    notes = [f"tokenized with the tokenizer in '{tokenizer_dir}'", "special tokens as it adds them",
             f"{length_note}, {n_truncated:,} of {len(rows):,} sequences truncated"
             + (f" (from the {side})" if n_truncated and side != "right" else ""),
             f"right-padded to {input_ids.shape[1]} tokens with pad id {pad_id} ({pad_note})"]
    notes += [note for note in (unknown_note, class_note) if note]
    return _dataset(input_ids, attention_mask, input_ids.copy() if task == CAUSAL_LM_TASK else labels, names,
                    name=name, where=where, task=task, vocab=len(tokenizer), notes=notes, format=format)


def _model_class_ids(labels: np.ndarray, names: tuple[str, ...], id2label: Mapping[int, str] | None, where: str,
                     *, named: bool) -> tuple[np.ndarray, tuple[str, ...], str]:
    """Class ids as the model numbers its classes, by the names in its config's ``id2label``; the ids as they
    are when the config names no classes (LABEL_0, …) or, for ids the data gave with names (a ClassLabel
    column), when their names are not all the model's. Returns the ids, the class names, and a note."""
    model = {int(k): str(v) for k, v in (id2label or {}).items()}
    shown = ", ".join(f"{k}={model[k]}" for k in sorted(model)[:6]) + (", …" if len(model) > 6 else "")
    informative = (model and sorted(model) == list(range(len(model))) and len(set(model.values())) == len(model)
                   and any(v != f"LABEL_{k}" for k, v in model.items()))
    order = "class names mapped to ids in sorted order" if named else "class ids as the data gives them"
    if not informative:
        why = "the model's config names no classes (id2label LABEL_0, …)" if model else "no model class names"
        return labels, names, f"{order} ({_shown_names(names)}): {why}"
    by_name = {v: k for k, v in model.items()}
    folded = {v.casefold(): k for k, v in model.items()}  # 'positive' for 'POSITIVE', when unambiguous

    def model_id(name: str) -> int | None:
        return by_name.get(name, folded.get(name.casefold()) if len(folded) == len(model) else None)

    used = [names[k] for k in np.unique(labels)]
    missing = [name for name in used if model_id(name) is None]
    if missing and named:
        raise KddiagError(f"{where}: label {missing[0]!r} is not one of the model's classes (its config's id2label: "
                          f"{shown}); give the labels as the model names them, or as class ids")
    if missing:
        return labels, names, (f"{order} ({_shown_names(names)}); not mapped by the model's id2label ({shown}), "
                               f"which lacks {missing[0]!r}")
    table = np.array([model_id(name) if name in used else -1 for name in names], dtype=np.int64)
    return (table[labels], tuple(model[k] for k in range(len(model))),
            f"class names mapped to the model's ids by its config's id2label ({shown})")


def _check_known_words(tokenizer, input_ids: np.ndarray, mask: np.ndarray, where: str) -> str | None:
    """Refuse text in which no token is a word the tokenizer knows (every one is its unknown token, or a special
    token it adds): not enough data. Otherwise a note when some words are unknown; None when none is."""
    special = np.asarray(sorted(set(tokenizer.all_special_ids or ())), dtype=np.int64)
    unk = tokenizer.unk_token_id
    tokens = input_ids[mask.astype(bool)]
    words = tokens[~np.isin(tokens, special[special != unk] if unk is not None else special)]
    n_unknown = int(np.count_nonzero(words == unk)) if unk is not None else 0
    if words.size == 0 or n_unknown == words.size:
        what = (f"every word is out of the tokenizer's vocabulary (all {words.size:,} tokens are its unknown token "
                f"{tokenizer.unk_token!r})" if words.size else "the text gives no token but the special ones the "
                                                                 "tokenizer adds")
        raise KddiagError(f"{where}: not enough data: {what}; is this text in the model's language, and the "
                          f"tokenizer the teacher's?")
    if n_unknown:
        return (f"{n_unknown:,} of {words.size:,} tokens ({n_unknown / words.size:.1%}) are the unknown token "
                f"{tokenizer.unk_token!r}")
    return None


def _tokenize(tokenizer, texts: list[str], max_length: int, where: str) -> tuple[list[list[int]], int]:
    """Token ids of each text, truncated by the tokenizer to ``max_length``; and how many were truncated."""
    try:
        with _native(where, "the tokenizer"), _quiet():
            rows = [list(ids) for ids in tokenizer(texts, truncation=False)["input_ids"]]
            long = [i for i, row in enumerate(rows) if len(row) > max_length]
            if long:  # the tokenizer truncates, so that the special tokens it adds stay
                cut = tokenizer([texts[i] for i in long], truncation=True, max_length=max_length)["input_ids"]
                for i, ids in zip(long, cut):
                    rows[i] = list(ids)
    except KddiagError:
        raise
    except Exception as error:
        raise KddiagError(f"{where}: the tokenizer failed ({_one_line(error)})") from None
    over = next((row for row in rows if len(row) > max_length), None)
    if over is not None:  # the tokenizer does not truncate below the special tokens it adds
        raise KddiagError(f"{where}: max_length {max_length} is too short: the tokenizer keeps {len(over)} tokens "
                          f"of a sequence (with the special tokens it adds); give a larger max_length")
    return rows, len(long)


def _pad_id(tokenizer) -> tuple[int, str]:
    """The pad id, and what it is: the pad token, else the eos token, else 0 (masked out all the same)."""
    if tokenizer.pad_token_id is not None:
        return int(tokenizer.pad_token_id), f"the pad token {tokenizer.pad_token!r}"
    if tokenizer.eos_token_id is not None:
        return int(tokenizer.eos_token_id), f"no pad token: the eos token {tokenizer.eos_token!r}"
    return 0, "no pad or eos token: id 0"


def _padded(rows: list, pad_id: int):
    """(n, longest) int64 ids right-padded with ``pad_id``, and the attention mask (1 on real tokens)."""
    length = max(len(row) for row in rows)
    ids = np.full((len(rows), length), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), length), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, :len(row)] = row
        mask[i, :len(row)] = 1
    return ids, mask


# --- from token ids ---------------------------------------------------------------------------------

def _from_columns(content: dict, *, name: str, where: str, task: str, tokenizer_dir, max_length: int | None,
                  format: str, trust_remote_code: bool, ragged_ok: bool = False) -> Dataset:
    """Pre-tokenized ``input_ids``, ``attention_mask`` and ``labels``; ``ragged_ok``: rows of different
    lengths are right-padded (Hugging Face datasets store them so), else refused."""
    if "input_ids" not in content:
        raise KddiagError(f"{where}: no 'input_ids' (found keys: {', '.join(map(str, content)) or 'none'}); expected "
                          f"'input_ids' (n_sequences, length) and optionally 'attention_mask' and 'labels'")
    causal = task == CAUSAL_LM_TASK
    keys = ("input_ids", "attention_mask") + (("labels",) if causal else ())
    if ragged_ok:
        content = _pad_ragged(content, keys, where)
    arrays = {key: _int_matrix(content[key], key, where) for key in keys if content.get(key) is not None}
    input_ids = arrays["input_ids"]
    for key, array in arrays.items():
        if array.shape != input_ids.shape:
            raise KddiagError(f"{where}: '{key}' has shape {array.shape} but 'input_ids' {input_ids.shape}; "
                              f"{'labels for a causal LM align' if key == 'labels' else 'the mask aligns'} "
                              f"with input_ids, one value per token")
    if input_ids.size == 0:
        raise KddiagError(f"{where}: 'input_ids' is empty (shape {input_ids.shape})")
    mask = arrays.get("attention_mask")
    if mask is not None and not np.isin(mask, (0, 1)).all():
        raise KddiagError(f"{where}: 'attention_mask' must hold only 0 (padding) and 1 (real tokens); got values "
                          f"from {mask.min()} to {mask.max()}")
    notes = [f"pre-tokenized ({'attention_mask given' if mask is not None else 'no attention_mask: all ones'}"
             + (f", {'labels given' if 'labels' in arrays else 'no labels: input_ids'}" if causal else "") + ")"]
    if content.get("_padded_rows"):
        notes.append(f"{content['_padded_rows']:,} rows of different lengths right-padded (mask 0)")
    if mask is None:
        mask = np.ones_like(input_ids)
    if causal:
        labels = arrays.get("labels", input_ids.copy())
    else:
        labels = _class_vector(content.get("labels"), len(input_ids), where)
    if max_length is not None and input_ids.shape[1] > max_length:
        n_truncated = int(mask[:, max_length:].any(axis=1).sum())
        input_ids, mask = input_ids[:, :max_length], mask[:, :max_length]
        labels = labels[:, :max_length] if causal else labels
        notes.append(f"max_length {max_length}, {n_truncated:,} of {len(input_ids):,} sequences truncated")
    tokenizer = (_load_tokenizer(tokenizer_dir, where, required=False, trust_remote_code=trust_remote_code)
                 if tokenizer_dir is not None else None)
    vocab = None if tokenizer is None else len(tokenizer)
    notes.append(f"token ids checked against the {vocab:,}-token vocabulary in '{tokenizer_dir}'" if vocab
                 else "token ids not checked against a vocabulary (no tokenizer)")
    return _dataset(input_ids, mask, labels, None, name=name, where=where, task=task, vocab=vocab, notes=notes,
                    format=format)


def _pad_ragged(content: dict, keys: tuple[str, ...], where: str) -> dict:
    """Rows given as lists of different lengths, right-padded: ids with 0, the mask with 0, labels with -100."""
    rows = {key: list(content[key]) for key in keys if content.get(key) is not None}
    lengths = [len(row) for row in rows["input_ids"]]
    if len(set(lengths)) <= 1:
        return content
    for key, value in rows.items():
        if [len(row) for row in value] != lengths:
            raise KddiagError(f"{where}: the rows of '{key}' and 'input_ids' differ in length; each needs one value "
                              f"per token")
    fills = {"input_ids": 0, "attention_mask": 0, "labels": IGNORE_INDEX}
    padded = {key: _padded(value, fills[key])[0] for key, value in rows.items()}
    if "attention_mask" not in padded:
        padded["attention_mask"] = _padded(rows["input_ids"], 0)[1]
    else:
        padded["attention_mask"] = padded["attention_mask"] * _padded(rows["input_ids"], 0)[1]
    return {**content, **padded, "_padded_rows": sum(n < max(lengths) for n in lengths)}


def _int_matrix(value: Any, key: str, where: str) -> np.ndarray:
    """(n, L) int64 from a tensor, an array or a list of equal-length rows."""
    import torch

    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy() if value.dtype != torch.bfloat16 else value.float().numpy()
    elif isinstance(value, (list, tuple)):
        rows = [r.detach().cpu().numpy() if isinstance(r, torch.Tensor) else np.asarray(r) for r in value]
        lengths = {r.shape for r in rows}
        if len(lengths) > 1:
            sizes = [r.shape[0] if r.ndim else 0 for r in rows]
            odd = next(i for i, s in enumerate(sizes) if s != sizes[0])
            raise KddiagError(f"{where}: '{key}' is ragged: sequence 0 has {sizes[0]} tokens but sequence {odd} has "
                              f"{sizes[odd]}; pad every sequence to one length and give 'attention_mask' (0 on "
                              f"padding)")
        value = np.stack(rows) if rows else np.zeros((0, 0), dtype=np.int64)
    array = np.asarray(value)
    if array.dtype == object:
        raise KddiagError(f"{where}: '{key}' is ragged or holds Python objects; pad every sequence to one length "
                          f"and give integer arrays")
    if array.ndim != 2:
        aligned = ", aligned with 'input_ids' (the model shifts them)" if key == "labels" else ""
        raise KddiagError(f"{where}: '{key}' must be 2-D (n_sequences, length){aligned}; got shape {array.shape}")
    if array.dtype.kind == "b":
        array = array.astype(np.int64)
    if array.dtype.kind not in "iu":
        raise KddiagError(f"{where}: '{key}' must hold integers; got dtype {array.dtype}")
    return array.astype(np.int64, copy=False)


def _class_vector(value: Any, n: int, where: str) -> np.ndarray:
    """(n,) int64 class ids ≥ 0 of a classification set."""
    import torch

    if value is None:
        raise KddiagError(f"{where}: no 'labels'; sequence classification needs 'labels', one class id per "
                          f"sequence (n_sequences,)")
    array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
    if array.shape != (n,):
        raise KddiagError(f"{where}: 'labels' for sequence classification must be ({n},), one class id per "
                          f"sequence; got shape {array.shape}")
    if array.dtype.kind not in "iu":
        raise KddiagError(f"{where}: 'labels' must be integer class ids; got dtype {array.dtype}")
    if array.min() < 0:
        raise KddiagError(f"{where}: 'labels' must be class ids >= 0; got {array.min()} "
                          f"(sequence {int(np.argmin(array))})")
    return array.astype(np.int64, copy=False)


# --- the data set -----------------------------------------------------------------------------------

def _dataset(input_ids: np.ndarray, mask: np.ndarray, labels: np.ndarray, names, *, name: str, where: str,
             task: str, vocab: int | None, notes: list[str], format: str) -> Dataset:
    """The Dataset, after checking token ids (and causal labels) against [0, vocab)."""
    import torch

    _check_ids(input_ids, "token ids in 'input_ids'", where, vocab)
    if task == CAUSAL_LM_TASK:
        targets = next_token_targets(labels, mask)
        flat = targets[targets != IGNORE_INDEX]
        _check_ids(flat, "'labels' at target positions (other than -100)", where, vocab)
        if flat.size == 0:
            raise KddiagError(f"{where}: no target position: no sequence has a real token after another whose "
                              f"label is not -100; a causal LM needs sequences of at least 2 tokens")
        x = TokenInputs(torch.from_numpy(input_ids), torch.from_numpy(mask), torch.from_numpy(targets))
        labels, count = flat, f"{len(input_ids):,} sequences, {flat.size:,} target positions"
    else:
        x = TokenInputs(torch.from_numpy(input_ids), torch.from_numpy(mask))
        count = f"{len(input_ids):,} sequences"
    return Dataset(name=name, x=x, labels=labels, class_info=ClassInfo(names=names), format=format,
                   preprocessing="; ".join(notes + [count]))


def next_token_targets(labels: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """(n, L) int64: ``labels[:, t + 1]`` at position t, IGNORE_INDEX at the last position, where position
    t or t + 1 is padding (``attention_mask`` 0) and where ``labels[:, t + 1]`` is IGNORE_INDEX.

    ``labels`` are aligned with the input ids, as Hugging Face causal LMs take them (the model shifts).
    """
    real = attention_mask.astype(bool)
    targets = np.full(labels.shape, IGNORE_INDEX, dtype=np.int64)
    keep = real[:, :-1] & real[:, 1:]
    targets[:, :-1] = np.where(keep, labels[:, 1:], IGNORE_INDEX)
    return targets


def _check_ids(ids: np.ndarray, what: str, where: str, vocab: int | None) -> None:
    if ids.size and ids.min() < 0:
        raise KddiagError(f"{where}: {what} must be >= 0; got {ids.min()}")
    if vocab is not None and ids.size and ids.max() >= vocab:
        raise KddiagError(f"{where}: {what} must lie in [0, {vocab}) for the tokenizer's {vocab:,}-token "
                          f"vocabulary; got {ids.max()}")


# --- the tokenizer ----------------------------------------------------------------------------------

def _load_tokenizer(directory, where: str, *, required: bool, trust_remote_code: bool = False):
    """The tokenizer in ``directory`` (local files only). ``required``: text needs it, so its absence is an
    error; else (token ids, checked against it when present) None. A directory that names code to run is
    refused unless ``trust_remote_code``, whatever ``required``."""
    directory = Path(directory)
    if not directory.is_dir():
        if not required:
            return None
        raise KddiagError(f"{where}: the tokenizer directory '{directory}' is not a directory; text is tokenized "
                          f"with the teacher's tokenizer from its Hugging Face directory")
    if not any((directory / f).is_file() for f in TOKENIZER_FILES):
        if not required:
            return None
        raise KddiagError(f"{where}: the teacher directory '{directory}' has no tokenizer (none of "
                          f"{', '.join(TOKENIZER_FILES[:2])}, …), so text cannot be tokenized; "
                          f"{_PRETOKENIZED_HINT}")
    try:
        import transformers
    except ImportError:
        if not required:
            return None
        raise KddiagError(f"{where}: tokenizing text needs the transformers package: "
                          f"pip install -e '.[transformers]' in the kddiag checkout") from None
    from kddiag.loading.hf import vet_hf_directory

    vet_hf_directory(directory, f"{where}: the tokenizer directory '{directory}'", trust_remote_code=trust_remote_code)
    try:
        with _native(where, f"reading the tokenizer in '{directory}'"), _quiet():
            return transformers.AutoTokenizer.from_pretrained(str(directory), local_files_only=True,
                                                              trust_remote_code=bool(trust_remote_code))
    except KddiagError:
        raise
    except Exception as error:
        raise KddiagError(f"{where}: could not read the tokenizer in '{directory}' ({_one_line(error)}); "
                          f"{_PRETOKENIZED_HINT}") from None


@contextlib.contextmanager
def _native(where: str, what: str) -> Iterator[None]:
    """Around calls into the tokenizers library (Rust): a panic there (e.g. a pre-tokenizer regex that
    backtracks past its limit) is a ``PanicException``, a BaseException ``except Exception`` misses, and Rust
    prints its message and backtrace on descriptor 2; both become one KddiagError line."""
    try:
        with native_stderr_silenced():
            yield
    except BaseException as error:
        if not is_rust_panic(error):
            raise
        raise KddiagError(f"{where}: {what} failed: the tokenizers library panicked ({_one_line(error)})") from None


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings or log lines from transformers/datasets (e.g. 'Token indices sequence length is longer…'),
    and nothing printed on stdout, which carries --json."""
    import io
    import logging
    import warnings

    loggers = [logging.getLogger(n) for n in ("transformers", "datasets", "huggingface_hub")]
    levels = [logger.level for logger in loggers]
    try:
        for logger in loggers:
            logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _shown_text(text: str) -> str:
    return repr(text if len(text) <= 40 else text[:40] + "…")


def _shown_names(names: tuple[str, ...]) -> str:
    shown = ", ".join(f"{k}={n}" for k, n in enumerate(names[:6]))
    return shown + (f", … ({len(names)} classes)" if len(names) > 6 else "")


def _one_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:240] + "…") if len(text) > 240 else text or type(error).__name__


CONTEXT_TOKENS = 8  # tokens of context shown before a listed target position


def token_contexts(dataset: Dataset, indices, tokenizer_dir, *, trust_remote_code: bool = False) -> dict[int, str]:
    """For examples ``indices`` of a causal-LM data set (target positions): the last CONTEXT_TOKENS tokens up
    to the position, decoded with the teacher's tokenizer, and the token that follows ('… the big ▸ dog');
    {} without a tokenizer. For the report's hardest examples."""
    x = dataset.x
    if not (isinstance(x, TokenInputs) and x.per_position) or tokenizer_dir is None:
        return {}
    tokenizer = _load_tokenizer(tokenizer_dir, "the report's examples", required=False,
                                trust_remote_code=trust_remote_code)
    if tokenizer is None:
        return {}
    offsets, positions = x.example_offsets(), x.target_positions()
    try:
        with _quiet(), _native("the report's examples", "decoding their tokens"):
            return {int(index): _context(tokenizer, dataset, int(index), offsets, positions) for index in indices}
    except KddiagError:  # a tokenizer that panics on decoding: the examples are listed without their text
        return {}


def _context(tokenizer, dataset: Dataset, index: int, offsets, positions) -> str:
    """Example ``index``'s context and following token, as :func:`token_contexts` shows them."""
    x = dataset.x
    sequence = int(np.searchsorted(offsets, index, side="right")) - 1
    t = int(positions[index])
    start = max(0, t - CONTEXT_TOKENS + 1)
    ids = x.input_ids[sequence, start:t + 1][x.attention_mask[sequence, start:t + 1] == 1].tolist()
    text = tokenizer.decode(ids, skip_special_tokens=False).strip()
    following = tokenizer.decode([int(dataset.labels[index])], skip_special_tokens=False).strip()
    return f"{'… ' if start > 0 else ''}{text} ▸ {following}"
