"""Regular expressions in tokenizer files: the published patterns pass, patterns that backtrack without end
(a repeated group that itself repeats or alternates) are refused in one line before the tokenizers library
compiles them, for the model, the vocabulary check and the text; --trust-remote-code lets them through.

Before: a tokenizer.json whose pre-tokenizer was Split(Regex("(a+)+[bd]")) made a 29 KB jsonl take minutes
(Oniguruma's retry limit counts one match attempt, so nothing panicked)."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from kddiag.errors import KddiagError, UnsafeLoadError
from kddiag.loading.regex_safety import backtracking_hazard, tokenizer_patterns
from small_models import one_line

ROOT = Path(__file__).resolve().parents[1]

# Published patterns, copied from transformers and tokenizers sources (convert_slow_tokenizer.py, the GGUF
# mapping, qwen2/qwen3_5/clip tokenization modules) and from published tokenizer.json files.
PUBLISHED = {
    "GPT-2 byte level": r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+",
    "Llama 3": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "Qwen2": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
             r"|\s+(?!\S)|\s+",
    "Qwen3.5": r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+",
    "Mistral Tekken": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                      r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
                      r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "GPT-4o / Llama 4": r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
                        r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+",
    "CLIP": r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+",
    "BLOOM (nested class)": r" ?[^(\s|[.,!?…。，、।۔،])]+",
    "DeepSeek V3": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
                   "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+",
    "DeepSeek V3 digits, CJK": "\\p{N}{1,3}|[一-龥\u3040-ゟ゠-ヿ]+",
    "Nougat": r"[\(\)\[\]\{\}]|([!\"#\$%\&'\*\+,\-\./:;<=>\?\\\^_`\|\~])\1*",
    "SentencePiece user-defined pieces": "|".join(map(re.escape, ["<|im_start|>", "[INST]", "a.b*c", "(x)+"])),
    "normalizers": r" {2,}|\A +| +\z|\A▁|\s+|\s{2,}|[\n\r\t]| +▁|^▁+$",
    "POSIX brackets, named group, comment": r"[[:alpha:][:^digit:]]+|(?<w>\p{L}+)\k<w>|a(?#note)b+",
}

CATASTROPHIC = [r"(a+)+[bd]", r"(a*)*b", r"(a|aa)+", r"(?:a|b)*", r"(?:a+){2,}", r"(a+){1,10}", r"(a?){25}",
                r"(?:\s*)+$", r"((a)+)+", r"(?i:(?:x|y)+)*", r"(\p{L}{1,3})+", r"(?<n>a+)+", r"(?>a+)+b",
                r"([ab]+c?)*", r"a{2,3}+", r"a**", r"(a+)(?#comment)+", r"x|(?=y)(?:[^]]+\]?)+z"]
UNCHECKABLE = [r"(?x)(a+) +", r"[x[:](a+)+[bd]]", r"(a)\g<1>", r"[(a+)+", r"\p{L", r"(?:a(?~b))*[^a]"]
# two unbounded repeats in a row, then what must match: cubic in a run's length (red-team pass 3: 40 s a line)
POLYNOMIAL = [r"[a-z ]*[a-z ]*[^a-z ]", r"\s*\s*$", r"a+b?a*c", r"a*(?:b*)c", r"a*a*(?:b)", r"x*(?:y*)?z*(?=q)",
              r"(?i:a*)b*c", r"\w{2,}\s*\b"]


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_published_patterns_pass(name):
    assert backtracking_hazard(PUBLISHED[name]) is None


@pytest.mark.parametrize("pattern", CATASTROPHIC)
def test_repeated_groups_that_repeat_or_alternate_are_found(pattern):
    assert backtracking_hazard(pattern).startswith("can backtrack without end (a repeated group")


@pytest.mark.parametrize("pattern", POLYNOMIAL)
def test_adjacent_repeats_before_what_must_match_are_found(pattern):
    assert backtracking_hazard(pattern).startswith("can backtrack for a time that grows as a power")


@pytest.mark.parametrize("pattern", UNCHECKABLE)
def test_what_the_scanner_cannot_follow_is_refused_not_guessed(pattern):
    assert "which kddiag cannot check" in backtracking_hazard(pattern)


@pytest.mark.parametrize("pattern", [r"(ab)+", r"(?:'s|'t)?", r"(a+){1}", r"(a|b){0,1}", r"[(a+)+]+", r"\(a+\)+",
                                     r"a+?b*+", r"(?i)ab+", r"(?:x)(?:y)*", r"a*b*", r"a*b*c?", r"a*c+b*",
                                     r"\s*[\r\n]+|x", r"a*xb*c"])
def test_bounded_or_flat_patterns_pass(pattern):
    assert backtracking_hazard(pattern) is None


def test_every_regex_in_a_tokenizer_json_is_found():
    content = {"normalizer": {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"Regex": " {2,}"},
                                                                   "content": " "}]},
               "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
                   {"type": "Sequence", "pretokenizers": [{"type": "Split", "pattern": {"Regex": "(a+)+"}}]},
                   {"type": "Split", "pattern": {"String": "(b+)+"}}]},
               "decoder": {"type": "Replace", "pattern": {"Regex": "x*"}, "content": ""},
               "model": {"type": "WordLevel", "vocab": {"Regex": 3}}}
    assert sorted(tokenizer_patterns(content)) == [("decoder", "x*"), ("normalizer", " {2,}"),
                                                   ("pre_tokenizer", "(a+)+")]


# --- tokenizer folders ----------------------------------------------------------------------------------

def save_tokenizer(directory, pattern=None, *, normalizer=None):
    """A word-level tokenizer saved with save_pretrained; ``pattern``: a Split pre-tokenizer regex."""
    tokenizers = pytest.importorskip("tokenizers")
    transformers = pytest.importorskip("transformers")
    from tokenizers import Regex, models, normalizers, pre_tokenizers

    backend = tokenizers.Tokenizer(models.WordLevel({"[UNK]": 0, "[PAD]": 1, "a": 2, "c": 3}, unk_token="[UNK]"))
    backend.pre_tokenizer = (pre_tokenizers.Whitespace() if pattern is None else pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Split(Regex(pattern), behavior="isolated")]))
    if normalizer is not None:
        backend.normalizer = normalizers.Sequence([normalizers.Replace(Regex(normalizer), " ")])
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                         pad_token="[PAD]").save_pretrained(directory)
    return Path(directory)


def test_the_attack_is_refused_for_the_text_and_the_vocabulary(tmp_path):
    from kddiag.readers.text import load_text_dataset
    from kddiag.vocabulary import read_vocabulary

    directory = save_tokenizer(tmp_path / "tok", "(a+)+[bd]")
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": ("a" * 23 + "c") * 60}) + "\n")
    with pytest.raises(UnsafeLoadError) as error:
        load_text_dataset(tmp_path / "t.jsonl", role="data", task="causal-lm", tokenizer_dir=directory)
    one_line(error, "--data", "tokenizer.json: its pre-tokenizer pattern '(a+)+[bd]' can backtrack without end",
             "--trust-remote-code")
    with pytest.raises(UnsafeLoadError) as error:
        read_vocabulary(directory, "student")
    one_line(error, "student", "tokenizer.json", "'(a+)+[bd]'")


def test_a_normalizer_pattern_is_checked_too_and_long_patterns_are_cut(tmp_path):
    from kddiag.vocabulary import read_vocabulary

    pattern = "x" * 100 + "(?:\\s|\\t)+"
    directory = save_tokenizer(tmp_path / "tok", normalizer=pattern)
    with pytest.raises(UnsafeLoadError) as error:
        read_vocabulary(directory, "teacher")
    one_line(error, "its normalizer pattern 'xxxx", "…'")
    assert pattern not in str(error.value)


def test_published_patterns_in_a_tokenizer_load(tmp_path):
    from kddiag.vocabulary import read_vocabulary

    for i, name in enumerate(("Llama 3", "BLOOM (nested class)", "GPT-4o / Llama 4")):
        directory = save_tokenizer(tmp_path / f"tok{i}", PUBLISHED[name], normalizer=r" {2,}")
        assert {"a", "c"} <= set(read_vocabulary(directory, "teacher").tokens)


def test_the_flag_lets_the_pattern_through(tmp_path):
    from kddiag.vocabulary import read_vocabulary

    directory = save_tokenizer(tmp_path / "tok", "(a+)+[bd]")
    assert read_vocabulary(directory, "teacher", trust_remote_code=True).size == 4


def test_versioned_and_tekken_files_are_checked_and_must_lie_beside(tmp_path):
    """tokenizer_config.json's fast_tokenizer_files makes transformers load tokenizer.<version>.json instead
    of tokenizer.json; a Mistral tekken.json carries its pattern in config.pattern."""
    from kddiag.vocabulary import read_vocabulary

    directory = save_tokenizer(tmp_path / "tok")
    bad = json.loads((directory / "tokenizer.json").read_text())
    bad["pre_tokenizer"] = {"type": "Split", "pattern": {"Regex": "(a|aa)+"}, "behavior": "Isolated",
                            "invert": False}
    (directory / "tokenizer.4.0.0.json").write_text(json.dumps(bad))
    config = json.loads((directory / "tokenizer_config.json").read_text())
    (directory / "tokenizer_config.json").write_text(json.dumps({**config,
                                                                 "fast_tokenizer_files": ["tokenizer.4.0.0.json"]}))
    with pytest.raises(UnsafeLoadError) as error:
        read_vocabulary(directory, "teacher")
    one_line(error, "tokenizer.4.0.0.json: its pre-tokenizer pattern '(a|aa)+'")
    (directory / "tokenizer.4.0.0.json").unlink()
    for outside in ("../evil/tokenizer.4.0.0.json", "/tmp/tokenizer.4.0.0.json"):
        (directory / "tokenizer_config.json").write_text(json.dumps({**config, "fast_tokenizer_files": [outside]}))
        with pytest.raises(KddiagError) as error:
            read_vocabulary(directory, "teacher")
        one_line(error, "fast_tokenizer_files names", "not a file beside it")
    (directory / "tokenizer_config.json").write_text(json.dumps(config))
    (directory / "tekken.json").write_text(json.dumps({"config": {"pattern": "(?:\\p{L}+)*"}, "vocab": []}))
    with pytest.raises(UnsafeLoadError) as error:
        read_vocabulary(directory, "teacher")
    one_line(error, "tekken.json: its pre-tokenizer pattern")


def test_a_duplicated_key_and_an_oversized_tokenizer_json_are_refused(tmp_path):
    from kddiag.loading.hf import MAX_TOKENIZER_BYTES
    from kddiag.vocabulary import read_vocabulary

    directory = save_tokenizer(tmp_path / "tok")
    text = (directory / "tokenizer.json").read_text()
    # json.loads keeps the last of two keys; a parser that keeps the first would run the other pattern
    twice = text.replace('"pre_tokenizer":', '"pre_tokenizer": {"type": "Split", "pattern": {"Regex": "(a+)+"}, '
                                             '"behavior": "Isolated", "invert": false}, "pre_tokenizer":', 1)
    (directory / "tokenizer.json").write_text(twice)
    with pytest.raises(UnsafeLoadError) as error:
        read_vocabulary(directory, "teacher")
    one_line(error, "tokenizer.json has the key 'pre_tokenizer' twice")
    with open(directory / "tokenizer.json", "wb") as handle:  # sparse: nothing written to disk
        handle.truncate(MAX_TOKENIZER_BYTES + 1)
    for trust in (False, True):
        with pytest.raises(KddiagError) as error:
            read_vocabulary(directory, "teacher", trust_remote_code=trust)
        one_line(error, "tokenizer.json is larger than 64 MiB")


def test_the_command_line_refuses_in_one_line_without_hanging(tmp_path):
    """The red team's case, end to end: a GPT-2 teacher whose tokenizer splits on (a+)+[bd], and a jsonl of
    runs of 23 'a's (minutes before)."""
    transformers = pytest.importorskip("transformers")
    import torch

    directory = save_tokenizer(tmp_path / "teacher", "(a+)+[bd]")
    torch.manual_seed(0)
    transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=4,
                                                         n_positions=64)).save_pretrained(directory)
    data = tmp_path / "regex.jsonl"
    data.write_text("".join(json.dumps({"text": ("a" * 23 + "c") * 60}) + "\n" for _ in range(20)))
    done = subprocess.run([sys.executable, "-m", "kddiag", "inspect", str(directory), str(directory), "--data",
                           str(data), "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=120,
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 1 and done.stdout == "", done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: ") and "Traceback" not in done.stderr, lines
    assert "tokenizer.json: its pre-tokenizer pattern '(a+)+[bd]' can backtrack without end" in lines[0]
    assert "--trust-remote-code" in lines[0]
