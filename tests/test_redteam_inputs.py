"""Inputs from a red-team review, each built here: files that are not files or are far too large (a FIFO, a
device, a 3 GB sparse file), JSON nested 100,000 deep, a denormal temperature from every source, Hugging
Face configs whose sizes or attention implementation the weights cannot back, a ZSTD-compressed datasets
folder of gigabytes in megabytes, a tokenizer whose regex panics in Rust, and names that carry control
characters. Each runs ``kddiag inspect`` in a subprocess under a deadline (the memory cases with an
address-space limit of 2.5 GB) and must end in exactly one stderr line, exit code 1, no traceback."""
import json
import os
import resource
import shutil
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch

from kddiag.errors import printable

ROOT = Path(__file__).resolve().parents[1]  # the subprocesses import this checkout's kddiag
MEMORY_LIMIT = 2_500_000_000  # bytes of address space: far below what any of the bombs asks for
TEACHER_ARCH = "mlp:64-32-10"


def inspect(cwd: Path, *args, timeout: int = 120, memory: bool = False) -> subprocess.CompletedProcess:
    """``kddiag inspect ARGS --out cwd/out`` in a subprocess; ``memory``: under RLIMIT_AS."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    env = dict(os.environ, PYTHONPATH=str(ROOT), RUST_BACKTRACE="1")  # a Rust panic would print its backtrace
    return subprocess.run([sys.executable, "-m", "kddiag", "inspect", *map(str, args), "--out", str(cwd / "out")],
                          capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env,
                          preexec_fn=limit if memory else None)


def assert_one_line(done: subprocess.CompletedProcess, *expected: str) -> str:
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr and "panicked" not in done.stderr.replace("library panicked", ""), \
        done.stderr[-3000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr[-3000:]
    line = lines[0]
    assert line.startswith("kddiag: error: "), line
    assert line.isprintable(), repr(line)  # no raw newline, escape or bell reaches the terminal
    for text in expected:
        assert text in line, line
    return line


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    from kddiag.loading.archs import build_arch

    path = tmp_path_factory.mktemp("teacher") / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_arch(TEACHER_ARCH, "teacher").state_dict(), path)
    return path


def teacher_args(teacher):
    return [teacher, "--teacher-arch", TEACHER_ARCH]


# --- side files: --classes, data specs ---------------------------------------------------------------

def test_classes_fifo_is_refused_without_blocking(tmp_path, teacher):
    fifo = tmp_path / "classes.json"
    os.mkfifo(fifo)
    done = inspect(tmp_path, *teacher_args(teacher), "--data", "digits:test", "--classes", fifo, timeout=90)
    assert_one_line(done, "--classes", "FIFO")


def test_classes_device_is_refused(tmp_path, teacher):
    link = tmp_path / "classes.json"
    link.symlink_to("/dev/zero")
    done = inspect(tmp_path, *teacher_args(teacher), "--data", "digits:test", "--classes", link, memory=True)
    assert_one_line(done, "--classes", "character device")


@pytest.mark.parametrize("option", ["--classes", "--data"])
def test_sparse_3gb_json_is_refused_before_it_is_read(tmp_path, teacher, option):
    sparse = tmp_path / "big.json"
    with open(sparse, "wb") as handle:
        handle.truncate(3 << 30)  # 3 GB of zeros, no disk blocks
    data = ["--data", "digits:test"] if option == "--classes" else []
    done = inspect(tmp_path, *teacher_args(teacher), *data, option, sparse, memory=True)
    assert_one_line(done, option, "larger than 16 MiB")


@pytest.mark.parametrize("option", ["--classes", "--data"])
def test_deeply_nested_json_is_one_line(tmp_path, teacher, option):
    deep = tmp_path / "deep.json"
    nested = "[" * 200_000 + "]" * 200_000
    deep.write_text(nested if option == "--classes" else '{"path": ' + nested + "}")
    data = ["--data", "digits:test"] if option == "--classes" else []
    done = inspect(tmp_path, *teacher_args(teacher), *data, option, deep)
    assert_one_line(done, option, "nested too deeply")


# --- checkpoints: kddiag.json settings, temperatures --------------------------------------------------

def _safetensors(teacher, path, metadata):
    from safetensors.torch import save_file

    state = {key: value.contiguous() for key, value in torch.load(teacher).items()}
    save_file(state, str(path), metadata=metadata)
    return path


def test_safetensors_deep_kddiag_json(tmp_path, teacher):
    path = _safetensors(teacher, tmp_path / "deep.safetensors", {"kddiag.json": "[" * 100_000 + "]" * 100_000})
    done = inspect(tmp_path, path, "--teacher-arch", TEACHER_ARCH, "--data", "digits:test")
    assert_one_line(done, "kddiag.json", "nested too deeply")


def test_pt2_extra_deep_kddiag_json(tmp_path):
    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(64, 10)

        def forward(self, x):
            return self.fc(x)

    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(Model(), (torch.randn(2, 64),)), str(good))
    deep = tmp_path / "deep.pt2"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(deep, "w") as target:
        root = source.namelist()[0].split("/")[0]
        for info in source.infolist():
            target.writestr(info.filename, source.read(info.filename))
        target.writestr(f"{root}/extra/kddiag.json", "[" * 100_000 + "]" * 100_000)
    done = inspect(tmp_path, deep, "--data", "digits:test")
    assert_one_line(done, "kddiag.json")


@pytest.mark.parametrize("source", ["cli", "checkpoint", "safetensors"])
def test_denormal_temperature_is_refused(tmp_path, teacher, source):
    from kddiag.loading.archs import build_arch

    state = build_arch("mlp:64-16-10", "student").state_dict()
    student, extra = tmp_path / "student.pt", []
    if source == "cli":
        torch.save(state, student)
        extra = ["--temperature", "1e-320"]
    elif source == "checkpoint":
        torch.save({"state_dict": state, "temperature": 5e-324, "alpha": 0.5}, student)
    else:
        torch.save(state, tmp_path / "plain.pt")
        student = _safetensors(tmp_path / "plain.pt", tmp_path / "student.safetensors", {"temperature": "5e-324"})
    done = inspect(tmp_path, *teacher_args(teacher), student, "--student-arch", "mlp:64-16-10", "--data",
                   "digits:test", "--transfer-data", "digits:train", *extra)
    assert_one_line(done, "temperature", "at least 0.001")


def test_temperature_floor_and_ceiling():
    from kddiag.errors import KddiagError
    from kddiag.metrics._common import MIN_TEMPERATURE, check_temperature

    check_temperature(MIN_TEMPERATURE, "t")
    check_temperature(0.04, "t")  # DINO's sharpest teacher temperature
    for value in (5e-324, 1e-320, MIN_TEMPERATURE / 2):
        with pytest.raises(KddiagError, match=r"^t must be at least 0\.001"):
            check_temperature(value, "t")


# --- Hugging Face directories -------------------------------------------------------------------------

transformers_needed = pytest.mark.skipif(
    not all(__import__("importlib").util.find_spec(m) for m in ("transformers", "safetensors", "tokenizers")),
    reason="needs transformers, safetensors and tokenizers")


def _config(directory: Path, config: dict, tensors: dict):
    from safetensors.torch import save_file

    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    save_file(tensors, str(directory / "model.safetensors"))
    return directory


@transformers_needed
def test_hf_zero_element_tensor_backs_no_size(tmp_path):
    """A [10**8, 0] tensor (no bytes) once "backed" vocab_size 10**8: a 25.6 GB embedding."""
    directory = _config(tmp_path / "zero", {"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
                                            "n_layer": 1, "n_head": 1, "n_embd": 64, "vocab_size": 10 ** 8,
                                            "n_positions": 16, "n_ctx": 16},
                        {"unused": torch.empty(10 ** 8, 0), "transformer.h.0.ln_1.weight": torch.ones(64)})
    done = inspect(tmp_path, directory, "--data", "digits:test", memory=True)
    assert_one_line(done, "vocab_size 100,000,000", "largest tensor dimension is 64")


@transformers_needed
def test_hf_position_table_bounded_by_the_weights(tmp_path):
    """BERT stores a table of max_position_embeddings rows: 2**24 of them (48 GiB) is not a rotary model's."""
    directory = _config(tmp_path / "bert", {"architectures": ["BertForSequenceClassification"], "model_type": "bert",
                                            "num_hidden_layers": 1, "num_attention_heads": 1, "hidden_size": 768,
                                            "intermediate_size": 8, "vocab_size": 8, "max_position_embeddings": 1 << 24,
                                            "type_vocab_size": 2, "num_labels": 2},
                        {"bert.embeddings.LayerNorm.weight": torch.ones(768)})
    done = inspect(tmp_path, directory, "--data", "digits:test", memory=True)
    assert_one_line(done, "max_position_embeddings 16,777,216", "table of its positions")


@transformers_needed
def test_rotary_positions_keep_their_ceiling():
    from kddiag.errors import KddiagError
    from kddiag.loading.hf import MAX_POSITIONS, check_config_sizes

    shapes = {"model.embed_tokens.weight": (100, 16), "model.layers.0.q.weight": (16, 16)}
    check_config_sizes({"model_type": "llama", "max_position_embeddings": 131072}, shapes, "x")  # defaults: rope
    check_config_sizes({"rope_theta": 1e4, "max_position_embeddings": MAX_POSITIONS}, shapes, "x")
    with pytest.raises(KddiagError, match="table of its positions"):
        check_config_sizes({"model_type": "gpt2", "max_position_embeddings": 4096}, shapes, "x")
    with pytest.raises(KddiagError, match="vocab_size"):  # a zero-element tensor backs nothing
        check_config_sizes({"vocab_size": 10 ** 6}, {**shapes, "z": (10 ** 6, 0)}, "x")


def _gpt2(directory: Path, vocab: dict, pre_tokenizer):
    import transformers
    from tokenizers import Tokenizer, models

    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        transformers.GPT2LMHeadModel(transformers.GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=len(vocab),
                                                             n_positions=64)).save_pretrained(directory)
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizer
    transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", eos_token="!",
                                         pad_token="!").save_pretrained(directory)
    return directory


VOCAB = {"[UNK]": 0, **{chr(97 + i): i + 1 for i in range(26)}, "!": 27}


@transformers_needed
def test_hf_attention_from_the_hub_is_refused(tmp_path):
    from tokenizers import pre_tokenizers

    directory = _gpt2(tmp_path / "kernel", VOCAB, pre_tokenizers.Whitespace())
    config = json.loads((directory / "config.json").read_text())
    config["attn_implementation"] = "kernels-community/flash-attn2"
    (directory / "config.json").write_text(json.dumps(config))
    done = inspect(tmp_path, directory, "--data", "digits:test", timeout=120)
    assert_one_line(done, "attn_implementation 'kernels-community/flash-attn2'", "built-in")


@transformers_needed
def test_tokenizer_rust_panic_is_one_line(tmp_path):
    from tokenizers import Regex, pre_tokenizers

    directory = _gpt2(tmp_path / "redos", VOCAB, pre_tokenizers.Split(Regex("(a+)+b"), behavior="isolated"))
    text = tmp_path / "text.txt"
    text.write_text(("a" * 40 + "!\n") * 20)
    refused = inspect(tmp_path, directory, "--data", text, timeout=180)  # its pattern is vetted first
    assert_one_line(refused, "pre-tokenizer pattern '(a+)+b' can backtrack without end", "--trust-remote-code")
    done = inspect(tmp_path, directory, "--data", text, "--trust-remote-code", timeout=180)  # then it panics
    assert_one_line(done, "tokenizers library panicked")


@pytest.mark.skipif(not all(__import__("importlib").util.find_spec(m) for m in ("datasets", "pyarrow", "transformers")),
                    reason="needs datasets, pyarrow and transformers")
def test_zstd_datasets_folder_is_refused_before_decompressing(tmp_path):
    """1.2 GB of text in a few MB: the Arrow stream's buffers are ZSTD-compressed."""
    import datasets
    import pyarrow as pa
    from tokenizers import pre_tokenizers

    directory = _gpt2(tmp_path / "teacher", VOCAB, pre_tokenizers.Whitespace())
    folder = tmp_path / "ds"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        datasets.Dataset.from_dict({"text": ["hello"]}).save_to_disk(str(folder))
    arrow = next(folder.glob("*.arrow"))
    with open(arrow, "rb") as handle:
        schema = pa.ipc.open_stream(handle).schema
    batch = pa.record_batch([pa.array(["a" * 2000] * 10_000, pa.string())], schema=schema)
    with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(
            sink, schema, options=pa.ipc.IpcWriteOptions(compression="zstd")) as writer:
        for _ in range(60):
            writer.write_batch(batch)
    assert arrow.stat().st_size < 20 << 20
    done = inspect(tmp_path, directory, "--data", folder, memory=True, timeout=180)
    assert_one_line(done, "once decompressed")


# --- control characters in names ----------------------------------------------------------------------

def test_spec_path_with_terminal_escapes_is_escaped(tmp_path, teacher):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"path": "nothere\n\x1b]0;PWNED-title\x07kddiag: all checks passed.pt"}))
    done = inspect(tmp_path, *teacher_args(teacher), "--data", spec)
    line = assert_one_line(done, "does not exist")
    assert "\\n\\x1b]0;PWNED-title\\x07" in line


def test_file_name_with_newline_and_escapes_is_escaped(tmp_path, teacher):
    odd = tmp_path / "a\nb\x1b[31mRED\x1b[0m\u202e.pt"
    shutil.copy(teacher, odd)
    done = inspect(tmp_path, odd, "--data", "digits:test")
    line = assert_one_line(done, "holds a state dict")
    assert "a\\nb\\x1b[31mRED\\x1b[0m\\u202e.pt" in line


def test_printable():
    assert printable("plain é 中 text") == "plain é 中 text"
    assert printable("a\nb\r\x1b[0m\x07\u202e\x85") == "a\\nb\\r\\x1b[0m\\x07\\u202e\\x85"
