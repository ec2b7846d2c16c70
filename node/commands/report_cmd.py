"""`p2pgolf report [--out DIR] [--bench NAME]`: a self-contained HTML report of the local pool
(node/views/report.py) and its figures as PNG files. Reads the pool only; needs matplotlib
(`pip install 'p2pgolf[report]'`)."""

from __future__ import annotations

from pathlib import Path

import click

from p2pgolf.node.cli import BadInput, UserError
from p2pgolf.node.home import Home


@click.command("report")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None, help="Folder for report.html and the PNG figures (default: <home>/report).")
@click.option("--bench", "bench_name", default="parameter-golf/sp1024-10min", show_default=True, help="Benchmark to report on (NAME or NAME@SECONDSs).")
@click.pass_obj
def report(home: Home, out_dir: Path | None, bench_name: str) -> None:
    """Write an HTML report with figures of the local pool."""
    from p2pgolf.node.views.build_report import make_report
    from p2pgolf.node.views.figures import PlottingMissing
    from p2pgolf.protocol.benchmarks import benchmark
    from p2pgolf.protocol.errors import ProtocolError

    try:
        bench = benchmark(bench_name)
    except ProtocolError as exc:
        raise BadInput(str(exc)) from None
    if not home.pool_db.exists():
        raise UserError(f"no pool at {home.pool_db}: run `p2pgolf join` or `p2pgolf pool import FILE` first")
    try:
        written, data = make_report(home, bench, out_dir or home.root / "report")
    except PlottingMissing as exc:
        raise UserError(str(exc)) from None
    click.echo(f"wrote {written.html} ({data.records} records of {bench.name}) and {len(written.pngs)} figure(s) beside it")
