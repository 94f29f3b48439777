"""The README and docs/: the README stays a short quick path, every relative link in them resolves (file and
heading anchor), install lines install from the checkout, and the quick path's commands run as written."""
import importlib.util
import json
import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from kddiag.cli import main

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
BY_NAME = re.compile(r"pip install (?:[^\s&|;`]+ )*?['\"]?kddiag\b")  # kddiag from the registry, where it is not


def prose(page: Path) -> str:
    """The page without its fenced code blocks (links and headings there are not links and headings)."""
    return FENCED.sub("", page.read_text(encoding="utf-8"))


def slug(heading: str) -> str:
    """The anchor GitHub gives a heading: link text kept, lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The heading anchors of ``page``; a repeated heading gets -1, -2, … as on GitHub."""
    seen: dict[str, int] = {}
    names = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(page), re.M):
        name = slug(heading)
        seen[name] = seen.get(name, -1) + 1
        names.add(name if seen[name] == 0 else f"{name}-{seen[name]}")
    return names


def section(page: Path, heading: str) -> str:
    """The text under the heading line ``heading`` up to the next heading of the same or a higher level."""
    text = page.read_text(encoding="utf-8")
    assert f"\n{heading}\n" in text, f"{page.name} has no heading {heading!r}"
    level = len(heading) - len(heading.lstrip("#"))
    return re.split(rf"\n#{{1,{level}}} ", text.split(f"\n{heading}\n", 1)[1], maxsplit=1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


# ---------------------------------------------------------------- size and links


def test_the_readme_is_a_short_quick_path():
    size = len(README.read_bytes())
    assert size < 20_000, f"README.md is {size} bytes; the reference belongs in docs/ (README under 20 KB)"


def test_slugs_follow_github():
    assert slug("Advice tested on your pair: `--probe`") == "advice-tested-on-your-pair---probe"
    assert slug("Set-up (fresh machine, Python ≥ 3.10)") == "set-up-fresh-machine-python--310"
    assert slug("Large inputs: streaming statistics, samples and class subsets") == \
        "large-inputs-streaming-statistics-samples-and-class-subsets"


def broken_links(page: Path) -> list[str]:
    """Each relative link of ``page`` (outside code blocks) whose file or heading anchor does not exist."""
    broken = []
    for target in LINK.findall(prose(page)):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:: not ours to check
            continue
        file, _, anchor = target.partition("#")
        destination = (page.parent / file).resolve() if file else page
        if not destination.is_file():
            broken.append(f"{target}: no such file")
        elif anchor and destination.suffix == ".md" and anchor not in anchors(destination):
            broken.append(f"{target}: no heading with that anchor in {destination.name}")
    return broken


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    assert not broken_links(page), f"{page.relative_to(ROOT)}: " + "; ".join(broken_links(page))


def test_the_link_check_can_fail(tmp_path):
    (tmp_path / "other.md").write_text("# Other\n\n## Twice\n\n## Twice\n")
    page = tmp_path / "page.md"
    page.write_text("# Title\n\n[ok](#title) [ok](other.md#twice-1) [ok](https://example.org/x.md)\n"
                    "[gone](missing.md) [no anchor](#nowhere) [no anchor](other.md#twice-2)\n"
                    "```\n[in code](nowhere.md)\n```\n")
    assert broken_links(page) == ["missing.md: no such file", "#nowhere: no heading with that anchor in page.md",
                                  "other.md#twice-2: no heading with that anchor in other.md"]


# ---------------------------------------------------------------- install lines


def test_install_lines_install_from_the_checkout():
    setup = blocks(section(README, "## Set-up (fresh machine, Python ≥ 3.10)"), "bash")
    assert len(setup) == 2 and setup[0].strip().endswith("kddiag demo") and \
        setup[1].strip().endswith("python -m pytest")
    for command in setup:
        assert "pip install torch==2.13.0 -e " in command
    # CI runs the README's test command: the same extras, installed the same way
    readme_extras = re.search(r"-e '\.\[([\w,]+)\]'", setup[1]).group(1)
    ci = (ROOT / ".ci" / "run").read_text()
    assert f"torch==2.13.0 -e '.[{readme_extras}]'" in ci and "--no-deps ccexam" in ci
    # kddiag is not on the registry: no page tells anyone to install it by name
    for page in PAGES:
        by_name = BY_NAME.findall(page.read_text(encoding="utf-8"))
        assert not by_name, f"{page.relative_to(ROOT)}: {by_name}"


# ---------------------------------------------------------------- the quick path, as written


QUICK_PATH = "### 2. Your own teacher and student"


def quick_path_commands(suffix: str) -> list[list[str]]:
    """The ``kddiag`` command lines of the quick path whose teacher's name ends with ``suffix``."""
    lines = [line for block in blocks(section(README, QUICK_PATH), "bash")
             for line in block.replace("\\\n", " ").splitlines()]  # continued lines joined, as the shell does
    commands = [shlex.split(line, comments=True) for line in lines if line.startswith("kddiag ")]
    return [command for command in commands if command[2].endswith(suffix)]


def digits_files(directory: Path):
    """test.pt / train.pt as the quick path describes them: {"x": inputs, "y": integer labels}."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x, y = torch.tensor(x[:450] / 16, dtype=torch.float32), torch.tensor(y[:450])
    torch.save({"x": x[:300], "y": y[:300]}, directory / "train.pt")
    torch.save({"x": x[300:], "y": y[300:]}, directory / "test.pt")
    return x


def run_as_written(command: list[str], directory: Path) -> dict:
    assert command[0] == "kddiag"
    result = CliRunner().invoke(main, [*command[1:], "--json"])
    assert result.exit_code == 0, f"{shlex.join(command)}\n{result.output}"
    report = json.loads(result.stdout)
    assert (directory / "report" / "report.json").is_file() and (directory / "report" / "report.html").is_file()
    return report


def test_the_quick_path_state_dict_and_pt2_commands_run_as_written(tmp_path, monkeypatch):
    import torch

    monkeypatch.chdir(tmp_path)
    (tmp_path / "models.py").write_text(blocks(section(README, QUICK_PATH), "python")[0])
    spec = importlib.util.spec_from_file_location("readme_quick_path_models", tmp_path / "models.py")
    models = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(models)
    x = digits_files(tmp_path)
    torch.manual_seed(0)
    pair = {"teacher": models.Tiny(256), "student": models.Tiny(8), "baseline": models.Tiny(8)}
    for role, model in pair.items():
        torch.save(model.state_dict(), tmp_path / f"{role}.pt")
        torch.export.save(torch.export.export(model.eval(), (x[:2],)), tmp_path / f"{role}.pt2")

    (state_dicts,), (programs,) = quick_path_commands(".pt"), quick_path_commands(".pt2")
    assert "--teacher-arch" in state_dicts and "--teacher-arch" not in programs
    for command, kind in ((state_dicts, "state_dict"), (programs, "torch.export")):
        report = run_as_written(command, tmp_path)
        formats = {entry["role"]: entry["format"] for entry in report["inputs"]["files"]}
        assert [formats[role] for role in pair] == [kind] * 3, formats


def test_the_quick_path_hugging_face_command_runs_as_written(tmp_path, monkeypatch):
    pytest.importorskip("transformers")  # the 'transformers' extra; CI's second pass installs it
    from tests.test_hf_inspect import classifier, sentences

    monkeypatch.chdir(tmp_path)
    classifier(tmp_path / "teacher_dir", 32, 0)
    classifier(tmp_path / "student_dir", 16, 1)
    for name, seed in (("held_out", 0), ("train", 1)):
        (tmp_path / f"{name}.jsonl").write_text("".join(
            json.dumps({"text": text, "label": len(text.split()) % 3}) + "\n" for text in sentences(60, seed)))
    (command,) = quick_path_commands("_dir/")
    report = run_as_written(command, tmp_path)
    formats = {entry["role"]: entry["format"] for entry in report["inputs"]["files"]}
    assert formats["teacher"] == formats["student"] == "hf-sequence-classifier"
