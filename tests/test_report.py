"""`p2pgolf report`: from a pool the simulator's landscape and the real bandit generated, one
self-contained HTML file (checked in a real headless Chromium: sections, decoded images, no
request leaving the page) and the same figures as PNG files; peer text shows as text."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from p2pgolf.node.cli import cli
from p2pgolf.node.home import Home
from p2pgolf.node.views import sim_pool
from p2pgolf.node.views.report import SECTIONS
from p2pgolf.pool.store import PoolStore
from p2pgolf.pool.trust import TrustStore
from p2pgolf.protocol.benchmarks import benchmark

pytest.importorskip("matplotlib", reason="p2pgolf report needs matplotlib (the `report` extra)")

HOSTILE_NOTE = '<script>document.title="owned"</script><img src="http://evil.example/x.png"><b>bold</b> [link=http://evil.example]x[/]'
HOSTILE_LABEL = '<i>mallory</i> [bold]'
FIGURES = ("best_over_time", "leaderboard", "lineage", "operators")


@pytest.fixture(scope="module")
def simulated_home(tmp_path_factory) -> Home:
    """A home whose pool three nodes and a verifier filled over 8 rounds, plus one stranger's
    record whose note and label hold markup."""
    home = Home(tmp_path_factory.mktemp("report") / "home")
    home.root.mkdir()
    nodes = sim_pool.identities(3, seed=1)
    verifier, stranger = sim_pool.identities(5, seed=2)[3:5]
    with PoolStore(home.pool_db) as store:
        sim_pool.simulate_pool(store, nodes, 8, seed=1, verifier=verifier)
        bench = benchmark(sim_pool.BENCH)
        hw = sim_pool.hardware_class(store.query(bench=bench.id, author=nodes[0].public_hex, kind="result")[0].record.hw.key)
        store.add_signed(sim_pool._result(stranger, bench, "naive-baseline", {"matrix_lr": 0.05}, (), hw.key, 1.30, sim_pool.T0_MS + 5, seed=0, note=HOSTILE_NOTE))
    with TrustStore(home.pool_db) as trust:
        trust.set_own(nodes[0].public_hex)
        trust.pin(nodes[1].public_hex, label="bob")
        trust.pin(stranger.public_hex, label=HOSTILE_LABEL)
    return home


@pytest.fixture(scope="module")
def report_dir(simulated_home, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("out")
    result = CliRunner().invoke(cli, ["--home", str(simulated_home.root), "report", "--out", str(out), "--bench", sim_pool.BENCH])
    assert result.exit_code == 0, result.output
    assert f"wrote {out / 'report.html'}" in result.output
    return out


def test_report_writes_one_html_and_the_same_figures_as_png(report_dir):
    page = (report_dir / "report.html").read_text()
    for name in FIGURES:
        png = (report_dir / f"{name}.png").read_bytes()
        assert png.startswith(b"\x89PNG\r\n\x1a\n")
        inline = re.search(rf'data-figure="{name}" src="data:image/png;base64,([^"]+)"', page)
        assert inline is not None, f"{name} is not inline"
        import base64

        assert base64.b64decode(inline.group(1)) == png
    for section in SECTIONS:
        assert f'<section id="{section}">' in page


def test_report_needs_nothing_outside_the_file(report_dir):
    page = (report_dir / "report.html").read_text()
    urls = re.findall(r'(?:src|href)\s*=\s*"([^"]*)"', page)
    assert urls and all(u.startswith("data:image/png;base64,") for u in urls), [u[:40] for u in urls if not u.startswith("data:")]
    assert "default-src 'none'" in page


def test_peer_markup_in_notes_and_labels_is_escaped(report_dir):
    page = (report_dir / "report.html").read_text()
    assert "<script>" not in page and "<b>bold</b>" not in page and "<i>mallory</i>" not in page
    assert "&lt;script&gt;document.title=&quot;owned&quot;&lt;/script&gt;" in page
    assert "&lt;i&gt;mallory&lt;/i&gt; [bold]" in page


def test_report_content_follows_the_pool(simulated_home):
    from p2pgolf.node.views.build_report import make_report  # the numbers the pages show, from the same call

    written, data = make_report(simulated_home, benchmark(sim_pool.BENCH), simulated_home.root / "again")
    assert written.html.exists()
    rows = data.records
    assert rows == 3 * 8 + 2 + 1  # three nodes' experiments, the verifier's checks in rounds 2 and 5, the stranger's
    board = data.leaderboards[0]
    assert board.hw == data.own_hw and "estimator" in board.method
    assert min(e.estimate for e in board.entries) == board.entries[0].estimate
    collective = data.curves[data.own_hw][0]
    assert collective.label == "collective" and list(collective.best) == sorted(collective.best, reverse=True)
    assert {p.label for p in data.peers} >= {"you", "bob", HOSTILE_LABEL}
    assert any(s.leader for s in data.lineage)
    assert any(p.checked for p in data.peers), "the verifier's re-evaluations count as checks"
    assert sum(data.operators.counts.values()) == rows


def test_report_refuses_a_home_without_a_pool(tmp_path):
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "none"), "report"])
    assert result.exit_code == 1 and "no pool at" in result.output


@pytest.fixture(scope="module")
def chromium():
    from browser import find_chromium

    path, why = find_chromium()
    if path is None:
        pytest.skip(why)
    return path


def test_report_in_a_real_browser_shows_its_sections_and_images_and_fetches_nothing(report_dir, chromium, tmp_path):
    from browser import Page

    page = Page(chromium)
    try:
        # the recorder sees a request that leaves a page: the control case
        control = tmp_path / "control.html"
        control.write_text('<html><body><img src="http://leak.invalid/pixel.png"></body></html>')
        page.load(control.as_uri())
        assert any(u.startswith("http://leak.invalid/") for u in page.requests)
        page.requests.clear()

        page.load((report_dir / "report.html").as_uri())
        sections = page.evaluate("[...document.querySelectorAll('section')].map(s => s.id)")
        images = page.evaluate("[...document.images].map(i => [i.dataset.figure, i.complete && i.naturalWidth > 100])")
        notes = page.evaluate("document.getElementById('notes').innerText")
        title = page.evaluate("document.title")
        scripts = page.evaluate("document.scripts.length")
    finally:
        page.close()
    assert sections == list(SECTIONS)
    assert sorted(images) == sorted([name, True] for name in FIGURES)
    assert HOSTILE_NOTE in notes, "the hostile note shows as the text it is"
    assert title.startswith("p2pgolf report") and scripts == 0
    leaving = [u for u in page.requests if not (u.startswith("data:") or u == (report_dir / "report.html").as_uri())]
    assert leaving == []


def test_report_of_an_empty_pool_says_so_and_leaves_no_stale_figures(tmp_path, report_dir):
    import shutil

    home = Home(tmp_path / "empty")
    home.root.mkdir()
    PoolStore(home.pool_db).close()
    out = tmp_path / "out"
    shutil.copytree(report_dir, out)  # an earlier report's figures in the same folder
    result = CliRunner().invoke(cli, ["--home", str(home.root), "report", "--out", str(out), "--bench", sim_pool.BENCH])
    assert result.exit_code == 0, result.output
    assert "0 records" in result.output and "0 figure(s)" in result.output
    page = (out / "report.html").read_text()
    assert "no results yet" in page and "no lineage yet" in page
    assert sorted(p.name for p in out.iterdir()) == ["report.html"]
