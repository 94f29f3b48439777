"""Where data sets come from: one entry, :func:`read_data`, and one reader per kind of input.

- :mod:`~kddiag.readers.text`: text for a Hugging Face teacher (``.txt``, ``.jsonl``, token ids in
  ``.pt``/``.npz``, a ``datasets`` folder saved with ``save_to_disk``), tokenized with its tokenizer;
- :mod:`~kddiag.readers.images`: a folder of images, one sub-folder per class;
- :mod:`~kddiag.readers.arrays`: arrays (``.npz``, ``.pt``), a JSON spec naming them, and the built-in
  ``digits``; image arrays through the image options.

Every reader treats its files as untrusted (docs/security.md) and raises a one-line KddiagError naming
the file and what is wrong.
"""
from __future__ import annotations

import os
from typing import Any

from kddiag.errors import KddiagError
from kddiag.inputs import Dataset, LoadedModel
from kddiag.options import InspectOptions
from kddiag.readers.arrays import check_enough_data, load_dataset

__all__ = ["check_enough_data", "read_data"]


def read_data(source: Any, *, role: str, options: InspectOptions, teacher: LoadedModel | None = None) -> Dataset:
    """The data set ``source`` names, read by the reader its kind calls for (see the module docstring), or a
    :class:`~kddiag.inputs.Dataset` given as it is. ``role`` names the option in errors ('data',
    'transfer-data'); ``teacher``: whose tokenizer reads text."""
    images = options.images
    if isinstance(source, (str, os.PathLike)) and teacher is not None and teacher.format.startswith("hf-"):
        from kddiag.loading.hf import CAUSAL_LM
        from kddiag.readers.text import CAUSAL_LM_TASK, SEQUENCE_CLASSIFICATION_TASK, load_text_dataset

        task = CAUSAL_LM_TASK if teacher.format == CAUSAL_LM else SEQUENCE_CLASSIFICATION_TASK
        return load_text_dataset(str(source), role=role, task=task, tokenizer_dir=teacher.metadata.get("tokenizer_dir"),
                                 max_length=options.max_length, trust_remote_code=options.trust_remote_code,
                                 id2label=teacher.metadata.get("id2label"),
                                 max_positions=teacher.metadata.get("max_positions"))
    if isinstance(source, Dataset):
        if images.given:
            raise KddiagError(f"--{role}: the image options (normalize, resize, layout) apply to data read "
                              f"from a path; the Dataset '{source.name}' was given as it is: prepare its x first")
        return source
    if isinstance(source, (str, os.PathLike)):
        return load_dataset(str(source), role=role, images=images)
    raise KddiagError(f"--{role}: expected a file path, a built-in data set name or a Dataset; "
                      f"got {type(source).__name__}")
