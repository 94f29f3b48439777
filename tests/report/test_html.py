"""The HTML report: self-contained, every section, every finding and metric, escaped, small enough."""
from __future__ import annotations

import dataclasses
import re
from html.parser import HTMLParser

import pytest

from kddiag.plots import report as plotting
from kddiag.report.html import render_html, summarize_value
from kddiag.report.json import report_to_dict
from kddiag.report.text import render_text
from kddiag.results import Measurements
from kddiag.diagnosis.findings import Diagnosis, Evidence, Finding

from ._fixtures import NO_WEIGHTS, build_logits_only_report, build_report, kd_helped

SECTION_IDS = ("verdict", "outcome", "universe", "domain", "instance", "temperature", "fidelity", "inputs",
               "metrics")


class _Collector(HTMLParser):
    """Element ids, finding ids, image sources and every tag/attribute of a page."""

    def __init__(self):
        super().__init__()
        self.ids, self.findings, self.images, self.tags = [], [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        if "id" in attrs:
            self.ids.append(attrs["id"])
        if "data-finding-id" in attrs:
            self.findings.append(attrs["data-finding-id"])
        if tag == "img":
            self.images.append(attrs.get("src", ""))


def _parse(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    return collector


@pytest.fixture(scope="module")
def full_html(full):
    return render_html(full)


@pytest.fixture(scope="module")
def logits_html():
    return render_html(build_logits_only_report())


def test_self_contained(full_html, logits_html):
    for html in (full_html, logits_html):
        assert not re.search(r"https?://", html, re.IGNORECASE)
        page = _parse(html)
        assert not [t for t, a in page.tags if t == "script"]
        assert not [t for t, a in page.tags if t == "link"]
        assert page.images and all(src.startswith("data:image/png;base64,") for src in page.images)
        assert all(not any(k in ("src", "href") and v and re.match(r"[a-z]+:", v) and not v.startswith("data:")
                           for k, v in attrs.items()) for _, attrs in page.tags)


def test_every_section_in_order(full_html, logits_html):
    for html in (full_html, logits_html):
        ids = _parse(html).ids
        assert all(section in ids for section in SECTION_IDS)
        assert [ids.index(s) for s in SECTION_IDS] == sorted(ids.index(s) for s in SECTION_IDS)


def test_lists_the_same_findings_as_the_json(full, full_html):
    expected = [f["id"] for f in report_to_dict(full)["findings"]]
    assert _parse(full_html).findings == expected
    for finding in full.diagnosis.findings:
        assert finding.advice.replace("'", "&#39;") in full_html
        for evidence in finding.evidence:
            assert evidence.metric in full_html
    for rule, _ in full.diagnosis.not_checked:
        assert rule in full_html


def test_logits_only_report_renders_not_available_and_no_verdict(logits_html):
    assert _parse(logits_html).findings == []
    assert "Verdict: none" in logits_html and "Verdict: healthy" not in logits_html
    assert NO_WEIGHTS in logits_html  # in the full metrics table
    assert "no transfer set given" in logits_html


def test_the_banner_is_green_only_when_kd_beat_the_baseline(full):
    healthy = Finding("healthy", (), 0.0, "KD beats the baseline and no failure case was found", (), "", "")
    green = render_html(dataclasses.replace(full, diagnosis=Diagnosis((healthy,))))
    assert 'class="verdict healthy"' in green
    unknown = dataclasses.replace(healthy, title="No known failure found; whether KD helped was not checked")
    grey = render_html(dataclasses.replace(full, diagnosis=Diagnosis((unknown,), verdict="gain-not-checked")))
    assert 'class="verdict neutral"' in grey and "Verdict: healthy" not in grey
    loss = Finding("kd-no-gain", ("outcome",), 0.6, "KD did not beat the baseline", (), "", "")
    red = render_html(dataclasses.replace(full, diagnosis=Diagnosis((loss,))))
    assert 'class="verdict healthy"' not in red and "kd-no-gain" in red


def test_kd_that_helped_gets_a_green_banner_and_room_to_improve(full, full_html):
    html = render_html(kd_helped(full, 0.016, (0.004, 0.028)))
    assert 'class="verdict healthy"' in html
    assert "Verdict: KD helped: +1.6 pt [0.4, 2.8] over the baseline" in html
    assert "<h2>Room to improve</h2>" in html and "<h2>Findings</h2>" not in html
    assert _parse(html).findings == [f.id for f in full.diagnosis.findings]
    assert "<h2>Findings</h2>" in full_html and 'class="verdict healthy"' not in full_html  # problems: red


def test_an_explicit_healthy_finding_is_listed_like_in_the_json(full):
    healthy = Finding("healthy", (), 0.0, "KD is doing what it should", (), "All levels transfer.", "")
    report = dataclasses.replace(full, diagnosis=Diagnosis((healthy,)))
    html = render_html(report)
    assert _parse(html).findings == [f["id"] for f in report_to_dict(report)["findings"]] == ["healthy"]
    assert "Verdict: healthy" in html


def test_every_metric_is_in_the_full_table(full, full_html):
    metrics = report_to_dict(full)["metrics"]
    table = full_html[full_html.index('id="metrics"'):]
    for names in metrics.values():
        for name in names:
            assert f">{name}<" in table
    assert f"{full.n_classes}×{full.n_classes} matrix" in table
    assert "10 entries" in table  # hardest_examples


def test_guessed_settings_are_marked(full_html):
    inputs = full_html[full_html.index('id="inputs"'):full_html.index('id="metrics"')]
    assert "guessed" in inputs and "--temperature" in inputs


def test_report_text_is_escaped_and_carries_no_urls(full):
    hostile = Finding("teacher-weak", ("outcome",), 0.5, "<script>alert(1)</script>",
                      (Evidence("outcome.teacher_accuracy", 0.5, 0.6, "eval", "<"),),
                      "See https://arxiv.org/abs/2002.03532 for details.", "Use a <b>better</b> teacher.")
    html = render_html(dataclasses.replace(full, diagnosis=Diagnosis((hostile,))))
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;b&gt;better&lt;/b&gt;" in html
    assert "arxiv.org/abs/2002.03532" in html and "https://" not in html


def test_control_and_bidirectional_characters_are_shown_escaped(full):
    """Red-team pass 3: a name '\u202egnp.pt' displayed as 'tp.png'; raw ESC bytes drove a terminal."""
    hostile = Finding("teacher-weak", ("outcome",), 0.5, "teacher \u202egnp.pt \x1b[31mred",
                      (Evidence("outcome.teacher_accuracy", 0.5, 0.6, "eval", "<"),), "why", "do")
    html = render_html(dataclasses.replace(full, diagnosis=Diagnosis((hostile,))))
    assert "\u202e" not in html and "\x1b" not in html
    assert "teacher \\u202egnp.pt \\x1b[31mred" in html


def test_hundred_classes_stays_under_five_megabytes():
    report = build_report(n_classes=100, n_transfer=1000, n_eval=500)
    html = render_html(report)
    assert len(html.encode("utf-8")) < 5_000_000
    assert len(_parse(html).images) == 6


@pytest.mark.parametrize("value, expected", [
    ([[0.0, 1.0], [1.0, 0.0]], "2×2 matrix"),
    (list(range(10)), "10 values: [0, 1, 2, …]"),
    ([1, 2], "[1, 2]"),
    ({"bin_edges": [0.0, 0.5, 1.0], "counts": [3, 4]}, "bin_edges: 3 values; counts: [3, 4]"),
    ([{"index": 1}, {"index": 2}], "2 entries"),
    (None, "—"),
    (0.12345, "0.123"),
])
def test_summarize_value(value, expected):
    assert summarize_value(value) == expected


def test_instance_section_has_one_rescaling_figure_and_the_w_footnotes(full_html):
    section = full_html[full_html.index('<section class="level" id="instance"'):full_html.index('id="temperature"')]
    assert section.count("<img ") == 1 and 'alt="Rescaling weight vs difficulty"' in section
    assert "heavy-tailed where the student is confident" in section
    assert "the diagnosis reads these" in section


def test_whatif_summary_states_the_metric_band(full, full_html):
    whatif = full.measurements.universe.temperature_whatif.value
    lo, hi = whatif.informative_range
    assert (f"Targets are informative ({whatif.band.min_smoothing:g} ≤ ε_eff ≤ 0.9·(C−1)/C and at most "
            f"{whatif.band.max_saturation:.0%} saturated) for τ ∈ [{lo:g}, {hi:g}] on the transfer set") in full_html


def test_hardest_examples_table_names_the_classes(full, full_html):
    hardest = full.measurements.instance.transfer.hardest_examples.value
    first = hardest[0]
    label = f"{first.label} ({full.class_info.names[first.label]})"
    section = full_html[full_html.index("Hardest examples for the teacher (transfer set)"):]
    assert label in section[:section.index("</table>")]


PLOTS = (plotting.plot_accuracy, plotting.plot_reliability, plotting.plot_target_confidence,
         plotting.plot_temperature_whatif, plotting.plot_class_similarity, plotting.plot_rescaling_vs_difficulty,
         plotting.plot_student_rescaling_vs_difficulty, plotting.plot_instance_rescaling)


@pytest.mark.parametrize("build", [build_report, build_logits_only_report], ids=["full", "logits-only"])
def test_every_reader_reads_only_attributes_that_exist(build, monkeypatch):
    """Text, HTML and every plot on a fully measured report (eval + transfer + baseline + features +
    weights + groups) and on a bare logits-mode one (eval only, no baseline): no attribute error, no
    figure replaced by an error note, and no string lookup through the transitional Measurements shim."""
    import matplotlib.pyplot as plt

    def refuse(*args, **kwargs):
        raise AssertionError("a reader looked a value up by name; read the record's attributes")

    for name in ("get", "value"):
        monkeypatch.setattr(Measurements, name, refuse, raising=False)
    monkeypatch.setattr(Measurements, "arrays", property(refuse), raising=False)
    report = build()
    assert render_text(report)
    html = render_html(report)
    assert 'class="figure-error"' not in html and len(_parse(html).images) == 6
    for plot in PLOTS:
        plot(report)
        plot(report.measurements)
    plt.close("all")


def test_thumbnails_are_drawn_for_images_only():
    import base64
    import io

    import numpy as np
    from PIL import Image

    from kddiag.report.html import _thumbnail

    gray = _thumbnail(np.linspace(-1, 1, 64).reshape(1, 8, 8))
    image = Image.open(io.BytesIO(base64.b64decode(gray.split(",", 1)[1])))
    assert image.size == (56, 56) and image.mode == "L"
    assert np.asarray(image).min() == 0 and np.asarray(image).max() == 255  # stretched to the full range
    rgb = Image.open(io.BytesIO(base64.b64decode(_thumbnail(np.random.rand(3, 28, 28)).split(",", 1)[1])))
    assert rgb.mode == "RGB" and rgb.size == (56, 56)
    for not_an_image in (np.zeros(64), np.zeros((5, 8, 8)), np.arange(12).reshape(3, 4) * np.nan):
        assert _thumbnail(not_an_image) is None


def test_image_inputs_get_thumbnails_in_the_report_and_flat_inputs_do_not(tmp_path):
    import numpy as np
    import torch

    from kddiag.models import MLP
    from kddiag.pipeline import inspect
    from kddiag.inputs import Dataset
    from kddiag.options import InspectOptions

    torch.manual_seed(0)
    x = torch.rand(200, 1, 8, 8)
    y = np.arange(200) % 10
    teacher, student = MLP((64, 32, 10)), MLP((64, 8, 10))
    options = InspectOptions(temperature=4.0, alpha=0.9)
    images = render_html(inspect(teacher, student, data=Dataset("img", x, y), options=options))
    assert images.count('class="thumb"') == 10 and "teacher wrong" in images
    flat = render_html(inspect(teacher, student, data=Dataset("flat", x.reshape(200, 64), y), options=options))
    assert 'class="thumb"' not in flat
    assert "<details>" in flat  # the full metrics table is folded


def test_the_probe_table_and_a_reason_when_the_probes_did_not_run(full):
    from kddiag.probe import Arm, Candidate, ProbeDesign, ProbeResult

    control = Arm(Candidate("control (τ 4, α 0.9)", 4.0, 0.9, origin="control"), 0.9, (0.9, 0.9))
    better = Arm(Candidate("α 0.45", 4.0, 0.45), 0.92, (0.92, 0.92), 0.02, (0.01, 0.03), (0.02, 0.02))
    design = ProbeDesign("initialization", 400, 64, 2, 1e-3, "checkpoint", 600, 300, 42.7, 5.0, "cpu")
    html = render_html(dataclasses.replace(full, probe=ProbeResult(arms=(control, better), design=design)))
    assert 'href="#probes"' in html and 'id="probes"' in html
    assert "+2.0 pt [1.0, 3.0]" in html and "helped" in html and "Adam lr 0.001 (checkpoint)" in html
    reason = "the student is a TorchScript program, with no initializer"
    html = render_html(dataclasses.replace(full, probe=ProbeResult(not_probed=reason)))
    assert f"Not run: {reason}" in html
    assert 'id="probes"' not in render_html(full)
