"""The HTML report: self-contained, its plots show the card's numbers, and a real browser renders it.

The browser test uses Debian's chromium (``tests/install_browser.sh``, run by ``make
test``, installs it where it can); without one it skips and says so.
"""
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import layerprof as lp
from conftest import make_batches, make_model
from layerprof.output import plots
from layerprof.output.report_html import FIGURES

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


@pytest.fixture(scope="module")
def card():
    return lp.profile(make_model("llama"), make_batches(n=4), rank=4, progress=False, coupling=True)


@pytest.fixture(scope="module")
def page(card, tmp_path_factory):
    path = tmp_path_factory.mktemp("report") / "card.html"
    card.to_html(path)
    return path


def test_page_is_self_contained(page):
    text = page.read_text()
    assert "<script" not in text and "<link" not in text and "@import" not in text and "@font-face" not in text
    # Every reference is in-page: matplotlib's SVG uses href="#id" for glyphs and clip paths and
    # embeds heat maps as data: URIs; http URLs appear only as XML namespace names, never fetched.
    refs = re.findall(r'(?:href|src)="([^"]*)"', text)
    assert refs and all(r.startswith(("#", "data:image/png;base64,")) for r in refs)
    assert not re.search(r"url\((?!#)", text)
    assert set(re.findall(r"https?://[^\"'< ]+", text)) <= {"http://www.w3.org/2000/svg",
                                                             "http://www.w3.org/1999/xlink"}


def test_every_figure_is_on_the_page(page):
    text = page.read_text()
    for key, title, _ in FIGURES:
        assert re.search(f"<figure id='{key}'><h3>[^<]*</h3><svg", text), key
    assert text.count("<svg") == len(FIGURES)


def test_no_coupling_figure_without_coupling(tmp_path):
    card = lp.profile(make_model("llama"), make_batches(n=2), rank=4, progress=False, coupling=False)
    text = card.to_html()
    assert "fig-coupling" not in text and "fig-share" in text


def test_share_plot_bars_are_the_gain_shares(card):
    plan = card.place(layers=card.default_layers())
    fig = plots.share_and_capture(card, plan.layers)
    bars = fig.axes[0].patches
    np.testing.assert_allclose([b.get_height() for b in bars], [l.gain_share for l in card.layers])
    red = [l.layer for l, b in zip(card.layers, bars) if b.get_facecolor()[:3] == pytest.approx((0.839, 0.153, 0.157), abs=1e-2)]
    assert red == sorted(plan.layers)
    line = fig.axes[1].lines[0]
    np.testing.assert_allclose(line.get_ydata(), [l.rank_capture for l in card.layers])


def test_pareto_plot_marks_the_plan_and_the_front(card):
    plan = card.place(layers=card.default_layers())
    fig = plots.pareto(card, plan)
    ax = fig.axes[0]
    star = list(ax.collections[-1].get_offsets()[0])
    assert star == pytest.approx([plan.cost, plan.predicted_gain_fraction])
    front = ax.lines[0]
    np.testing.assert_allclose(front.get_xdata(), [p["cost"] for p in plan.front])
    # Single layers sit on the plan's own scale (a share of the card's score, as placement counts it):
    # the best one alone is exactly what the one-layer top-k placement reports.
    singles = ax.collections[0].get_offsets()
    np.testing.assert_allclose(singles[:, 0], [l.cost for l in card.layers])
    best_alone = card.place(layers=1, coupled=False).predicted_gain_fraction
    assert max(singles[:, 1]) == pytest.approx(best_alone, rel=1e-12)


def test_selector_ranks_match_each_column(card):
    fig = plots.selector_ranks(card)
    ranks = fig.axes[0].images[0].get_array()
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    columns = {"card score": "score", "ρ² (the paper's resnorm)": "resnorm", "gradient norm ‖C‖": "grad_norm",
               "activation norm": "act_norm", "nfn (PLoP-style)": "nfn", "ρ²× (cross-half)": "resnorm2_x"}
    checked = 0
    for row, label in zip(ranks, labels):
        col = next((c for prefix, c in columns.items() if label.startswith(prefix)), None)
        if col is None:
            continue
        first = card.ranking(by=col)[0]
        assert row[[l.layer for l in card.layers].index(first)] == 1, label
        checked += 1
    assert checked >= 5


def test_coupling_heat_map_shows_rho(card):
    fig = plots.coupling(card)
    np.testing.assert_allclose(fig.axes[0].images[0].get_array(), card.meta["coupling"]["rho"])


def _browser():
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    pytest.skip("no chromium found: `bash tests/install_browser.sh` (run by `make test`) installs Debian's "
                "chromium; the HTML report's browser test needs it")


@pytest.mark.browser
def test_headless_browser_renders_the_plots(page, tmp_path):
    browser = _browser()
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars",
             "--disable-background-networking", "--no-first-run", "--disable-extensions", "--mute-audio"]
    dom = subprocess.run([browser, *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True,
                         timeout=120)
    assert dom.returncode == 0, dom.stderr[-2000:]
    # The parsed document holds every figure's SVG with drawn paths inside.
    for key, _, _ in FIGURES:
        block = dom.stdout.split(f'<figure id="{key}">', 1)
        assert len(block) == 2, key
        assert "<svg" in block[1].split("</figure>", 1)[0] and "<path" in block[1].split("</figure>", 1)[0]
    shot = tmp_path / "card.png"
    r = subprocess.run([browser, *flags, "--window-size=1280,4000", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and shot.exists(), r.stderr[-2000:]
    import matplotlib.image

    img = matplotlib.image.imread(shot)[..., :3]
    assert img.std() > 0.05, "the screenshot is blank"
    nonwhite = (img < 0.9).any(axis=-1).mean()
    assert nonwhite > 0.02
    # The plots' colours reached the screen: the recommended layers' red and the other layers' blue.
    red = ((img[..., 0] > 0.75) & (img[..., 1] < 0.3) & (img[..., 2] < 0.3)).sum()
    blue = ((abs(img[..., 0] - 0.12) < 0.08) & (abs(img[..., 1] - 0.47) < 0.08) & (abs(img[..., 2] - 0.71) < 0.08)).sum()
    assert red > 200 and blue > 1000, (red, blue)


def test_cli_report_html(tmp_path, card):
    path = card.save(tmp_path / "card.json")
    out = tmp_path / "card.html"
    r = subprocess.run([sys.executable, "-m", "layerprof.cli", "report", str(path), "--html", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert out.read_text().count("<svg") == len(FIGURES)
    assert f"wrote {out}" in r.stderr
    assert "# Layer Card" not in r.stdout  # the page, not the Markdown as well


def test_the_page_follows_the_sections_not_their_headings(card, monkeypatch):
    """Markdown and HTML render one section model; renaming a heading moves nothing on the page."""
    from layerprof.output import report, report_html

    parts = report.sections(card)
    assert [p.key for p in parts][:4] == ["summary", "recommendation", "layers", "modules"]
    assert report.markdown(card) == report.render(parts)
    renamed = [report.Section(p.key, "Was wir empfehlen" if p.key == "recommendation" else
                              "Schichten" if p.key == "layers" else p.title, p.body) for p in parts]
    monkeypatch.setattr(report_html, "sections", lambda c, plan=None: renamed)
    page = report_html.html(card)
    box = page[page.index("<div class='recommendation'>"):]
    assert box.index("Was wir empfehlen") < box.index("</div>") < box.index("<h2>Plots</h2>") < box.index("Schichten")
