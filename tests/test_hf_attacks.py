"""Hostile Hugging Face directories: code named by any file that chooses classes (tokenizer and processor
configs too), files that are not files, and config sizes the weights cannot back. Each is refused in one
line naming the file and the key, before transformers builds anything; nothing runs, nothing prompts,
nothing hangs (every case that could hang runs under a deadline)."""
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

from kddiag.errors import KddiagError, UnsafeLoadError  # noqa: E402
from kddiag.loading import load_model  # noqa: E402
from kddiag.loading.hf import MAX_CONFIG_BYTES, MAX_LAYERS, MAX_POSITIONS, check_config_sizes  # noqa: E402
from kddiag.readers.text import load_text_dataset  # noqa: E402
from kddiag.vocabulary import read_vocabulary  # noqa: E402
from small_models import deadline, one_line

ROOT = Path(__file__).resolve().parents[1]  # subprocesses import this checkout's kddiag
WORDS = "the cat dog sat on a mat".split()
SHIPPED = "import pathlib\npathlib.Path(__file__).parent.joinpath('ran').touch()\n"  # marks that it ran


def save_tokenizer(directory):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[EOS]"] + WORDS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]",
                            eos_token="[EOS]").save_pretrained(directory)
    return len(vocab)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name -> a save_pretrained directory with a tokenizer: GPT-2 and BLOOM (no built-in tokenizer class)."""
    root = tmp_path_factory.mktemp("hf")
    torch.manual_seed(0)
    t = transformers
    out = {}
    for name, make in (("gpt2", lambda v: t.GPT2LMHeadModel(t.GPT2Config(n_layer=1, n_head=2, n_embd=16,
                                                                          vocab_size=v, n_positions=32))),
                       ("bloom", lambda v: t.BloomForCausalLM(t.BloomConfig(vocab_size=v, hidden_size=16, n_layer=1,
                                                                            n_head=2)))):
        directory = root / name
        vocab = save_tokenizer(directory)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            make(vocab).save_pretrained(directory)
        out[name] = directory
    return out


@pytest.fixture
def copy_of(saved, tmp_path):
    def copy(name):
        return Path(shutil.copytree(saved[name], tmp_path / name))
    return copy


def edit(path, **changes):
    """Set keys of a JSON file (created when absent); a None value removes the key."""
    content = json.loads(path.read_text()) if path.exists() else {}
    content.update(changes)
    path.write_text(json.dumps({k: v for k, v in content.items() if v is not None}))


def tokenizer_with_shipped_code(directory):
    """BLOOM has no built-in tokenizer class: with no tokenizer_class, transformers 5 would ask on stdout
    whether to run the tokenizer code an auto_map names."""
    (directory / "tokenization_evil.py").write_text(SHIPPED + "from transformers import PreTrainedTokenizerFast\n"
                                                    "class EvilTokenizer(PreTrainedTokenizerFast):\n    pass\n")
    edit(directory / "tokenizer_config.json", tokenizer_class=None,
         auto_map={"AutoTokenizer": [None, "tokenization_evil.EvilTokenizer"]})
    return directory


# --- code named by any file that chooses classes ---------------------------------------------------------

def test_tokenizer_auto_map_is_refused_for_the_model_the_vocabulary_and_the_text(copy_of, tmp_path):
    directory = tokenizer_with_shipped_code(copy_of("bloom"))
    with pytest.raises(UnsafeLoadError) as error:
        load_model(directory, role="teacher")
    one_line(error, "teacher checkpoint", "tokenizer_config.json", "auto_map", "--trust-remote-code")
    with pytest.raises(UnsafeLoadError) as error:
        read_vocabulary(directory, "student")
    one_line(error, "student", "tokenizer_config.json", "auto_map")
    (tmp_path / "t.txt").write_text("the cat sat\n")  # text: the tokenizer is required
    np.savez(tmp_path / "t.npz", input_ids=np.ones((2, 3), dtype=np.int64))  # token ids: checked against it
    for data in ("t.txt", "t.npz"):
        with pytest.raises(UnsafeLoadError) as error:
            load_text_dataset(tmp_path / data, role="data", task="causal-lm", tokenizer_dir=directory)
        one_line(error, "--data", "tokenizer_config.json", "auto_map")
    assert not list(directory.rglob("ran"))


@pytest.mark.parametrize("file", ["config.json", "tokenizer_config.json", "preprocessor_config.json",
                                  "processor_config.json", "video_preprocessor_config.json",
                                  "generation_config.json"])
def test_auto_map_in_any_file_that_chooses_classes_is_refused(copy_of, file):
    directory = copy_of("gpt2")
    edit(directory / file, auto_map={"AutoProcessor": "processing_evil.EvilProcessor"})
    with pytest.raises(UnsafeLoadError) as error:
        load_model(directory, role="student")
    one_line(error, f"student checkpoint '{directory}': {file}", "auto_map", "--trust-remote-code")


def test_auto_map_in_a_nested_config_is_refused(copy_of):
    directory = copy_of("gpt2")
    edit(directory / "config.json", text_config={"auto_map": {"AutoConfig": "configuration_evil.EvilConfig"}})
    with pytest.raises(UnsafeLoadError) as error:
        load_model(directory, role="teacher")
    one_line(error, "config.json", "auto_map")


@pytest.mark.parametrize("file, key, name", [
    ("tokenizer_config.json", "tokenizer_class", "EvilTokenizer"),
    ("config.json", "tokenizer_class", "EvilTokenizerFast"),
    ("tokenizer_config.json", "processor_class", "EvilProcessor"),
    ("preprocessor_config.json", "image_processor_type", "EvilImageProcessor"),
    ("preprocessor_config.json", "feature_extractor_type", "EvilFeatureExtractor"),
    ("tokenizer_config.json", "tokenizer_class", "os.system"),
])
def test_class_names_transformers_does_not_have_are_refused(copy_of, file, key, name):
    directory = copy_of("gpt2")
    edit(directory / file, **{key: name})
    with pytest.raises(UnsafeLoadError) as error:
        load_model(directory, role="teacher")
    one_line(error, file, key, name, "--trust-remote-code")


@pytest.mark.parametrize("name", ["TokenizersBackend", "PreTrainedTokenizerFast", "GPT2TokenizerFast",
                                  "GPT2Tokenizer"])
def test_transformers_own_tokenizer_classes_pass(copy_of, name):
    directory = copy_of("gpt2")
    edit(directory / "tokenizer_config.json", tokenizer_class=name)
    assert set(WORDS) <= set(read_vocabulary(directory, "teacher").tokens)


def test_the_flag_lets_a_directory_name_its_code(copy_of):
    directory = copy_of("gpt2")
    edit(directory / "tokenizer_config.json", tokenizer_class="EvilTokenizer")
    assert load_model(directory, role="teacher", trust_remote_code=True).format == "hf-causal-lm"


def test_transformers_is_always_told_whether_to_trust(copy_of, tmp_path, monkeypatch):
    """trust_remote_code given explicitly to every from_pretrained kddiag calls: transformers prompts only
    when it is None."""
    directory = copy_of("gpt2")
    seen = []
    for auto in (transformers.AutoTokenizer, transformers.AutoModelForCausalLM):
        original = auto.from_pretrained.__func__

        def spy(cls, *args, _original=original, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code")))
            return _original(cls, *args, **kwargs)

        monkeypatch.setattr(auto, "from_pretrained", classmethod(spy))
    load_model(directory, role="teacher")
    read_vocabulary(directory, "teacher")
    (tmp_path / "t.txt").write_text("the cat sat on a mat\n")
    load_text_dataset(tmp_path / "t.txt", role="data", task="causal-lm", tokenizer_dir=directory)
    assert {name for name, _ in seen} == {"AutoTokenizer", "AutoModelForCausalLM"}
    assert all(trust is False for _, trust in seen), seen


def test_no_prompt_and_clean_stdout_from_the_command_line(copy_of, tmp_path):
    """The issue's case: before, transformers asked 'Do you wish to run the custom code? [y/N]' on stdout and
    read stdin. Now one line on stderr, nothing on stdout (--json stays parseable), stdin never read."""
    directory = tokenizer_with_shipped_code(copy_of("bloom"))
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "the cat sat on a mat"}) + "\n")
    done = subprocess.run([sys.executable, "-m", "kddiag", "inspect", str(directory), "--data",
                           str(tmp_path / "t.jsonl"), "--json"], input="y\n", capture_output=True, text=True,
                          timeout=120, cwd=ROOT, env={**os.environ, "HF_MODULES_CACHE": str(tmp_path / "modules")})
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "tokenizer_config.json" in done.stderr and "auto_map" in done.stderr
    assert "Traceback" not in done.stderr and "[y/N]" not in done.stderr
    assert not list(directory.rglob("ran")) and not list(tmp_path.rglob("ran"))


# --- files that are not files ----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tokenizer.json", "config.json", "special_tokens_map.json"])
def test_a_fifo_in_a_model_directory_is_refused_by_name(copy_of, name):
    directory = copy_of("gpt2")
    (directory / name).unlink(missing_ok=True)
    os.mkfifo(directory / name)
    with deadline(30), pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    # config.json is looked for before the directory is read (kddiag.loading): not a file, so not found
    one_line(error, "without config.json" if name == "config.json" else f"'{name}' is a FIFO (named pipe)")


def test_a_fifo_tokenizer_file_is_refused_when_reading_the_vocabulary(copy_of):
    directory = copy_of("gpt2")
    (directory / "tokenizer.json").unlink()
    os.mkfifo(directory / "tokenizer.json")
    with deadline(30), pytest.raises(KddiagError) as error:
        read_vocabulary(directory, "teacher")
    one_line(error, "'tokenizer.json' is a FIFO (named pipe), not a regular file")


def test_a_link_to_a_device_is_refused(copy_of):
    directory = copy_of("gpt2")
    (directory / "tokenizer.json").unlink()
    (directory / "tokenizer.json").symlink_to("/dev/zero")
    with deadline(30), pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, "'tokenizer.json' is a character device")


def test_an_oversized_or_deeply_nested_config_is_refused(copy_of):
    directory = copy_of("gpt2")
    with open(directory / "generation_config.json", "wb") as handle:  # sparse: nothing written to disk
        handle.truncate(MAX_CONFIG_BYTES + 1)
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, "generation_config.json: larger than 16 MiB; expected a configuration")
    (directory / "generation_config.json").write_text("{}")
    (directory / "tokenizer_config.json").write_text('{"a": ' * 100_000 + "1" + "}" * 100_000)
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, "tokenizer_config.json: not readable JSON (nested too deeply)")


def test_a_safetensors_header_longer_than_its_file_is_refused(copy_of):
    directory = copy_of("gpt2")
    (directory / "model.safetensors").write_bytes((10 ** 12).to_bytes(8, "little") + b"{}")
    with pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, "model.safetensors: not a safetensors file", "1,000,000,000,000 bytes in a file of 10")


def test_shards_are_read_from_the_index_and_only_beside_it(saved, tmp_path):
    model = transformers.AutoModelForCausalLM.from_pretrained(saved["gpt2"], trust_remote_code=False)
    directory = tmp_path / "sharded"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(directory, max_shard_size=2000)
    index = directory / "model.safetensors.index.json"
    assert len(set(json.loads(index.read_text())["weight_map"].values())) > 1
    assert load_model(directory, role="teacher").format == "hf-causal-lm"
    content = json.loads(index.read_text())
    name = next(iter(content["weight_map"]))
    os.mkfifo(tmp_path / "fifo")
    for shard in ("../fifo", str(tmp_path / "fifo"), ["list"]):
        index.write_text(json.dumps({**content, "weight_map": {**content["weight_map"], name: shard}}))
        with deadline(30), pytest.raises(KddiagError) as error:
            load_model(directory, role="teacher")
        one_line(error, f"model.safetensors.index.json names the shard {shard!r}, not a file beside it")


# --- sizes the weights cannot back -----------------------------------------------------------------------

def test_a_million_layers_is_refused_before_the_model_is_built(copy_of):
    """The issue's case: n_layer 1000000 made transformers build layers for hours."""
    directory = copy_of("gpt2")
    edit(directory / "config.json", n_layer=1_000_000)
    with deadline(60), pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, "config.json's n_layer 1,000,000", f"ceiling of {MAX_LAYERS:,} layers")


@pytest.mark.parametrize("key, value, words", [
    ("n_layer", 65, "tensor names index 1 layer(s)"),  # the weights hold 1 layer; 64× allowed for sharing
    ("num_labels", 10 ** 9, "largest tensor dimension is"),  # transformers builds a dict of 10⁹ labels
    ("n_embd", 10 ** 8, "largest tensor dimension is"),
    ("vocab_size", 1e12, "vocab_size 1,000,000,000,000 does not match"),
    ("n_positions", 10 ** 10, "largest tensor dimension is"),
])
def test_sizes_the_weights_cannot_back_are_refused(copy_of, key, value, words):
    directory = copy_of("gpt2")
    edit(directory / "config.json", **{key: value})
    with deadline(60), pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, f"teacher checkpoint '{directory}': config.json's {key}", words)


def test_size_bounds_against_the_tensors():
    shapes = {"model.embed.weight": (100, 16), "model.layers.0.q.weight": (16, 16),
              "model.layers.1.q.weight": (16, 16), "model.layers.1.experts.0.w": (4, 16)}
    check_config_sizes({"num_hidden_layers": 2, "hidden_size": 16, "vocab_size": 100, "max_position_embeddings":
                        MAX_POSITIONS, "rope_theta": 10000.0, "text_config": {"num_hidden_layers": 2}}, shapes, "x")
    check_config_sizes({"num_hidden_layers": 12, "num_hidden_groups": 1}, {"a.0.w": (4,)}, "x")  # ALBERT shares
    check_config_sizes({"n_layer": MAX_LAYERS, "hidden_size": 10 ** 9}, None, "x")  # pickled weights: no header
    for config in ({"num_hidden_layers": 129}, {"hidden_size": 101}, {"text_config": {"vocab_size": 101}},
                   {"max_position_embeddings": MAX_POSITIONS + 1}, {"n_layer": float("inf")},
                   {"num_key_value_heads": float("nan")}):
        with pytest.raises(KddiagError, match="config.json's"):
            check_config_sizes(config, shapes, "x")
    with pytest.raises(KddiagError, match="ceiling"):
        check_config_sizes({"n_layer": MAX_LAYERS + 1}, None, "x")


def test_the_flag_reaches_every_tokenizer_an_inspection_reads(copy_of, tmp_path, monkeypatch):
    """--trust-remote-code given to the model is given to its tokenizer too: the text data, the
    vocabulary check between teacher and student and the report's decoded examples."""
    import kddiag
    from kddiag.options import InspectOptions

    directory = copy_of("gpt2")
    seen = []
    original = transformers.AutoTokenizer.from_pretrained.__func__

    def spy(cls, *args, **kwargs):
        seen.append(kwargs.get("trust_remote_code"))
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", classmethod(spy))
    (tmp_path / "t.txt").write_text("the cat sat on a mat\nthe dog sat on a log\n" * 4)
    kddiag.inspect(directory, directory, data=tmp_path / "t.txt", options=InspectOptions(trust_remote_code=True))
    assert len(seen) >= 3 and all(trust is True for trust in seen), seen


# --- memory the built model would take ---------------------------------------------------------------------

def save_gpt_neo(directory, *, positions, layers, stored_layers=None):
    """A GPT-Neo of width 4 whose config states ``positions`` (backed by a real position table) and ``layers``
    (``stored_layers`` of them in the weights): GPT-Neo registers a tril(ones(P, P)) buffer per layer."""
    stored = layers if stored_layers is None else stored_layers
    config = transformers.GPTNeoConfig(vocab_size=64, hidden_size=4, num_layers=stored, num_heads=1,
                                       max_position_embeddings=min(positions, 256), intermediate_size=8,
                                       attention_types=[[["global"], stored]])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = transformers.GPTNeoForCausalLM(config)
        model.transformer.wpe = torch.nn.Embedding(positions, 4)
        model.config.max_position_embeddings = positions
        model.save_pretrained(directory)
    edit(directory / "config.json", num_layers=layers, attention_types=[[["global"], layers]],
         attention_layers=["global"] * layers)
    return directory


def test_buffers_the_weights_do_not_back_are_refused_before_they_are_allocated(tmp_path):
    """The red team's case: a 270 KB folder whose max_position_embeddings (16384, backed by a real table)
    makes GPT-Neo allocate 8 × 256 MiB of causal masks while transformers builds it. The model is now built
    on the meta device first and its bytes compared with the weights'."""
    directory = save_gpt_neo(tmp_path / "neo", positions=16384, layers=8)
    with deadline(60), pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, f"teacher checkpoint '{directory}': config.json asks for a model of 2.0 GiB",
             "'transformer.h.0.attn.attention.bias', 256.0 MiB", "at most 4× the weights' bytes or 256 MiB")


def test_layers_the_weights_do_not_index_are_refused(tmp_path):
    """The red team's other case: num_layers 64 over one stored layer (64 × 4 GiB of masks at 32768
    positions)."""
    directory = save_gpt_neo(tmp_path / "neo", positions=512, layers=2, stored_layers=1)
    with deadline(60), pytest.raises(KddiagError) as error:
        load_model(directory, role="teacher")
    one_line(error, "config.json's num_layers 2 does not match the weights, whose tensor names index 1 layer(s)")


def test_the_bound_is_checked_under_a_memory_cap_from_the_command_line(tmp_path):
    """Before: 2.75 GB (64 GB for 32768 positions and 64 layers) before any refusal; now one line under a
    2.5 GB address-space cap."""
    import resource

    directory = save_gpt_neo(tmp_path / "neo", positions=32768, layers=1)
    (tmp_path / "t.txt").write_text("a b c\n")

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2_500_000_000, 2_500_000_000))

    done = subprocess.run([sys.executable, "-m", "kddiag", "inspect", str(directory), "--data",
                           str(tmp_path / "t.txt"), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=cap)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("kddiag: error: "), lines
    assert "config.json asks for a model of 1.0 GiB" in lines[0]


def test_small_models_with_real_buffers_still_load(tmp_path):
    """GPT-Neo with 2048 positions and 4 layers: 16 MiB of masks on 0.2 MiB of weights, under the floor."""
    directory = save_gpt_neo(tmp_path / "neo", positions=2048, layers=4)
    assert load_model(directory, role="teacher").format == "hf-causal-lm"


def test_only_shared_layers_may_outnumber_the_stored_ones():
    shapes = {"model.layers.0.w": (4, 4), "model.layers.1.w": (4, 4)}
    check_config_sizes({"num_hidden_layers": 2}, shapes, "x")
    check_config_sizes({"model_type": "albert", "num_hidden_layers": 24}, shapes, "x")  # ALBERT shares layers
    # a decoder-only *ForCausalLM built from an encoder-decoder config builds no encoder
    check_config_sizes({"architectures": ["BartForCausalLM"], "encoder_layers": 12, "decoder_layers": 2}, shapes, "x")
    for config in ({"num_hidden_layers": 3}, {"architectures": ["BartForCausalLM"], "decoder_layers": 3},
                   {"architectures": ["BartForSequenceClassification"], "encoder_layers": 12}):
        with pytest.raises(KddiagError, match="tensor names index 2 layer"):
            check_config_sizes(config, shapes, "x")


# --- Hugging Face datasets folders: the files state.json names --------------------------------------------

def test_state_json_may_name_only_regular_files_beside_it(tmp_path):
    """datasets.load_from_disk reads the files state.json's _data_files names, whatever their names or
    places; kddiag sizes exactly those, so they must be plain files in the folder."""
    from kddiag.readers.text import _check_arrow_sizes

    split = tmp_path / "split"
    split.mkdir()
    (split / "dataset_info.json").write_text("{}")
    os.mkfifo(tmp_path / "fifo")
    (split / "pipe").symlink_to(tmp_path / "fifo")
    for files, words in ((["../x.arrow"], "names the data file '../x.arrow', not a file beside it"),
                         (["/etc/hostname"], "not a file beside it"),
                         (["missing.arrow"], "'missing.arrow' (named in state.json): no such file"),
                         (["pipe"], "'pipe' (named in state.json): a FIFO"),
                         ([], "expected '_data_files' to list the split's Arrow files"),
                         ("data.arrow", "expected '_data_files'")):
        entries = [{"filename": f} for f in files] if isinstance(files, list) else files
        (split / "state.json").write_text(json.dumps({"_data_files": entries}))
        with deadline(30), pytest.raises(KddiagError) as error:
            _check_arrow_sizes(split, "--data 'split'")
        one_line(error, "--data 'split'", words)
    (split / "state.json").write_text('{"_data_files": []' + " " * (1 << 20) + "}")
    with pytest.raises(KddiagError) as error:
        _check_arrow_sizes(split, "--data 'split'")
    one_line(error, "state.json: larger than 1 MiB; expected the few hundred bytes save_to_disk writes")
    with open(split / "dataset_info.json", "wb") as handle:  # datasets reads it whole; sparse here
        handle.truncate((16 << 20) + 1)
    with pytest.raises(KddiagError) as error:
        _check_arrow_sizes(split, "--data 'split'")
    one_line(error, "dataset_info.json is larger than 16 MiB")


def test_a_data_file_not_named_arrow_is_sized_too(tmp_path, monkeypatch):
    """The red team's case: 11 million rows in 'data-00000-of-00001.bin', named in state.json, were never
    sized (the check looked at *.arrow only), and datasets loaded them. Here 100 rows against a limit of 10."""
    pa = pytest.importorskip("pyarrow")
    import kddiag.readers.text as text

    split = tmp_path / "split"
    split.mkdir()
    table = pa.table({"text": ["a b"] * 100, "label": list(range(100))})
    with pa.OSFile(str(split / "data-00000-of-00001.bin"), "wb") as sink:
        with pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table)
    (split / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.bin"}]}))
    monkeypatch.setattr(text, "MAX_TEXT_LINES", 10)
    with pytest.raises(KddiagError) as error:
        text._check_arrow_sizes(split, "--data 'split'")
    one_line(error, "'data-00000-of-00001.bin' holds more than 10 rows")


def test_a_trainer_state_beside_the_weights_gives_the_probes_the_runs_length(copy_of):
    from kddiag.loading.hf import TRAINER_STATE

    directory = copy_of("gpt2")
    edit(directory / TRAINER_STATE, epoch=2.5, global_step=40, train_batch_size=8,
         log_history=[{"learning_rate": 1e-5, "step": 10}, {"learning_rate": 5e-5, "step": 20},
                      {"learning_rate": 2e-5, "step": 30}, {"eval_loss": 1.2}])
    metadata = load_model(directory, role="student").metadata
    assert (metadata["epochs"], metadata["batch_size"], metadata["learning_rate"]) == (2.5, 8, 5e-5)
    (directory / TRAINER_STATE).write_text("{not json")  # a record kddiag may use, never fatal
    assert "epochs" not in load_model(directory, role="student").metadata


@pytest.mark.parametrize("file, key", [("special_tokens_map.json", "additional_special_tokens"),
                                       ("tokenizer_config.json", "extra_special_tokens"),
                                       ("added_tokens.json", None)])
def test_tokenizers_adding_too_many_tokens_are_refused_trusted_or_not(copy_of, monkeypatch, file, key):
    """Red-team pass 3: 3 million additional special tokens made transformers' loading run past a minute."""
    from kddiag.loading import hf

    monkeypatch.setattr(hf, "MAX_ADDED_TOKENS", 5)
    directory = copy_of("gpt2")
    tokens = [f"<s{i}>" for i in range(6)]
    if key is None:
        (directory / file).write_text(json.dumps({t: 100 + i for i, t in enumerate(tokens)}))
    else:
        edit(directory / file, **{key: tokens})
    for trust in (False, True):
        with pytest.raises(KddiagError, match=f"{file}.* 6 added tokens; kddiag reads tokenizers of at most 5"):
            hf.vet_tokenizer_files(directory, "t", trust_remote_code=trust)


def test_a_tokenizer_vocabulary_larger_than_any_model_reads_is_refused(copy_of, monkeypatch):
    from kddiag.loading import hf

    monkeypatch.setattr(hf, "MAX_CLASSES", 8)
    directory = copy_of("gpt2")
    with pytest.raises(KddiagError, match=r"tokenizer.json lists 10 vocab entries; .* at most 8"):
        hf.vet_tokenizer_files(directory, "t")


def test_text_is_cut_to_the_models_positions_unless_asked_for_more(copy_of, tmp_path):
    """Red-team pass 3: a GPT-2 of 32 positions fed 512 tokens failed with 'IndexError: index out of range'."""
    from kddiag.loading.hf import CAUSAL_LM

    directory = copy_of("gpt2")
    teacher = load_model(directory, role="teacher")
    assert teacher.format == CAUSAL_LM and teacher.metadata["max_positions"] == 32
    text = tmp_path / "long.txt"
    text.write_text(" ".join(WORDS * 20) + "\n" + " ".join(WORDS) + "\n")
    data = load_text_dataset(text, role="data", task="causal-lm", tokenizer_dir=directory, max_positions=32)
    assert data.x.input_ids.shape[1] == 32 and "max_length 32 (the models' positions" in data.preprocessing
    with pytest.raises(KddiagError, match=r"--max-length 100 is more tokens than the models have positions \(32"):
        load_text_dataset(text, role="data", task="causal-lm", tokenizer_dir=directory, max_length=100,
                          max_positions=32)
    result = subprocess.run([sys.executable, "-m", "kddiag", "inspect", str(directory), "--data", str(text),
                             "--out", str(tmp_path / "out")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr
