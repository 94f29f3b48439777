"""Do teacher and student index one vocabulary? Read from their tokenizers before any forward pass.

Token-level distillation compares the teacher's and the student's distributions over the vocabulary
id by id: if id k is a different token for each, every per-token measurement pairs different tokens.
:func:`compare_vocabularies` is the pure comparison (token → id maps and special tokens);
:func:`read_vocabulary` reads them from a Hugging Face tokenizer directory.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from kddiag.errors import KddiagError, is_rust_panic, native_stderr_silenced

MAX_LISTED = 5  # differing ids and special tokens named in a finding
SPECIAL_TOKENS = ("bos_token", "eos_token", "pad_token", "unk_token", "sep_token", "cls_token", "mask_token")


@dataclass(frozen=True)
class Vocabulary:
    """A tokenizer's token → id map and its special tokens (name → token, e.g. 'eos_token' → '</s>')."""

    tokens: Mapping[str, int]
    special: Mapping[str, str]
    source: str

    @property
    def size(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True)
class VocabularyComparison:
    """How two vocabularies differ: their sizes, the ids whose tokens differ (the first MAX_LISTED:
    (id, teacher token, student token), None where an id is absent), and the special tokens that differ
    ((name, teacher's, student's))."""

    teacher_size: int
    student_size: int
    n_differing: int  # ids below the larger size whose token differs (or that one side lacks)
    first_differing: tuple[tuple[int, str | None, str | None], ...]
    special: tuple[tuple[str, str | None, str | None], ...]

    @property
    def same(self) -> bool:
        return self.n_differing == 0 and not self.special

    def describe(self) -> str:
        """One sentence on how they differ."""
        parts = []
        if self.teacher_size != self.student_size:
            parts.append(f"the teacher's tokenizer has {self.teacher_size:,} tokens, the student's {self.student_size:,}")
        if self.n_differing:
            listed = "; ".join(f"id {i}: {t!r} vs {s!r}" for i, t, s in self.first_differing)
            parts.append(f"{self.n_differing:,} ids name different tokens (first: {listed})")
        if self.special:
            listed = "; ".join(f"{name} {t!r} vs {s!r}" for name, t, s in self.special[:MAX_LISTED])
            parts.append(f"special tokens differ ({listed})")
        return ", ".join(parts) if parts else "the vocabularies are the same"


def compare_vocabularies(teacher: Vocabulary, student: Vocabulary) -> VocabularyComparison:
    """Compare two vocabularies id by id and their special tokens."""
    by_id = [{i: token for token, i in v.tokens.items()} for v in (teacher, student)]
    size = max(max(by_id[0], default=-1), max(by_id[1], default=-1)) + 1
    differing = [(i, by_id[0].get(i), by_id[1].get(i)) for i in range(size) if by_id[0].get(i) != by_id[1].get(i)]
    special = tuple((name, teacher.special.get(name), student.special.get(name)) for name in SPECIAL_TOKENS
                    if teacher.special.get(name) != student.special.get(name))
    return VocabularyComparison(teacher.size, student.size, len(differing), tuple(differing[:MAX_LISTED]), special)


def read_vocabulary(tokenizer_dir: str | Path, role: str, *, trust_remote_code: bool = False) -> Vocabulary:
    """The vocabulary of the tokenizer saved in ``tokenizer_dir`` (read locally, never downloaded).

    A directory that names code to run (an ``auto_map``, a tokenizer class transformers does not have) is
    refused unless ``trust_remote_code`` (:func:`kddiag.loading.hf.vet_hf_directory`)."""
    where = f"{role} '{tokenizer_dir}'"
    try:
        import transformers
    except ImportError:
        raise KddiagError(f"{where}: reading its tokenizer needs the transformers package: "
                          f"pip install -e '.[transformers]' in the kddiag checkout") from None
    from kddiag.loading.hf import _quiet, vet_hf_directory

    vet_hf_directory(tokenizer_dir, where, trust_remote_code=trust_remote_code)
    try:
        with native_stderr_silenced(), _quiet():
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_dir), local_files_only=True,
                                                                   trust_remote_code=bool(trust_remote_code))
            special = {name: str(getattr(tokenizer, name)) for name in SPECIAL_TOKENS
                       if getattr(tokenizer, name, None)}
            tokens = dict(tokenizer.get_vocab())
    except BaseException as error:  # transformers raises many kinds for a broken tokenizer; tokenizers panics
        if not isinstance(error, Exception) and not is_rust_panic(error):
            raise
        raise KddiagError(f"{where}: cannot read its tokenizer ({' '.join(str(error).split())[:200]})") from None
    return Vocabulary(tokens, special, str(tokenizer_dir))
