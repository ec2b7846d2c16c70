"""`p2pgolf train`: train one candidate (base config + knob diff) and write its run directory.

What it guarantees: every knob, the seed, the budget and the backend are checked before
anything starts (a bad value fails naming the knob and its allowed range), and so is the budget:
a config whose first step cannot fit is refused naming the knobs to change (trainer.step_budget).
Without --base the base follows the benchmark and the hardware. A budget other than the
benchmark's own is said to make another benchmark (NAME@SECONDSs). While training, a live line
shows step (or micro-batch inside a long step), loss, tokens/s and time left; at the end one
block prints one metric per line (`val_bpb:`, `val_loss:`, `steps:`, `training_seconds:`,
`tokens_per_s:`, `artifact_bytes:`, `cpu_share:`, `degraded:` ...). Exit code 0 when the run is ok; 1 when it failed or its artifact is
over the benchmark's size cap (the reason is printed on stderr, and result.json says so too);
130 after Ctrl-C, which leaves result.json with status "abandoned".
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from p2pgolf.node.cli import UserError

SUMMARY_FIELDS = (
    "val_bpb", "val_loss", "prequant_val_bpb", "steps", "training_seconds", "tokens_per_s", "train_tokens",
    "artifact_bytes", "eval_tokens", "eval_partial", "params",
)  # fmt: skip


def parse_sets(sets: tuple[str, ...], seed: int | None) -> tuple[dict[str, Any], int | None]:
    """`--set name=value` pairs as a checked diff, and the seed (`--set seed=N` is allowed)."""
    from p2pgolf.protocol.knobs import knob

    diff: dict[str, Any] = {}
    for item in sets:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise UserError(f"--set expects name=value, got {item!r}")
        if name == "seed":
            try:
                value_seed = int(value)
            except ValueError:
                raise UserError(f"seed must be an integer, got {value!r}") from None
            if seed is not None and seed != value_seed:
                raise UserError(f"--seed {seed} and --set seed={value_seed} disagree")
            seed = value_seed
            continue
        if name in diff:
            raise UserError(f"knob {name} is set twice")
        diff[name] = knob(name).parse(value)
    return diff, seed


@click.command()
@click.option("--bench", "bench_name", default="parameter-golf/sp1024-10min", show_default=True, help="Benchmark name (NAME or NAME@SECONDSs).")
@click.option("--base", default=None, help="Base config the knob diff applies to (default: one that fits the benchmark and this hardware: smoke-tiny on smoke, naive-baseline on a GPU, cpu-small on a CPU).")
@click.option("--set", "sets", multiple=True, metavar="KNOB=VALUE", help="Change one knob (repeatable).")
@click.option("--budget", type=float, default=None, help="Training budget in seconds (default: the benchmark's).")
@click.option("--seed", type=int, default=None, help="Random seed (default 1337); recorded in the result.")
@click.option("--out", "out_dir", type=click.Path(file_okay=False), default=None, help="Run directory (default: HOME/runs/<time>-<candidate>).")
@click.option("--backend", type=click.Choice(["auto", "torch", "mlx"]), default="auto", show_default=True)
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda", "mps"]), default="auto", show_default=True)
@click.option("--data-dir", type=click.Path(file_okay=False), default=None, help="Benchmark data (default: HOME/data).")
@click.option("--eval-tokens", type=int, default=0, help="Score at most this many validation tokens (0: all); a capped score is marked partial.")
@click.option(
    "--compile",
    "compile_mode",
    type=click.Choice(["auto", "on", "off"]),
    default="auto",
    show_default=True,
    help="torch.compile: auto compiles on CUDA; on also compiles on a CPU (faster steps after minutes of untimed compiling).",
)
@click.option("--timeout", type=float, default=0.0, help="Stop the whole run after this many seconds (0: no limit beyond the budget's own stop).")
@click.option("--tokenizer", default=None, help="Tokenizer variant of the candidate (parameter-golf: sp1024, sp4096, sp8192; default: the benchmark's). Set vocab_size to cover it.")
@click.pass_obj
def train(home, bench_name, base, sets, budget, seed, out_dir, backend, device, data_dir, eval_tokens, compile_mode, timeout, tokenizer) -> None:
    """Train one candidate and write a run directory."""
    from p2pgolf.trainer.api import default_run_dir, prepare_run
    from p2pgolf.trainer.backend import BackendUnavailable
    from p2pgolf.trainer.run_history import past_runs
    from p2pgolf.trainer.runner import RunDirError, launch
    from p2pgolf.trainer.step_budget import BudgetError, check_run_fits

    diff, seed = parse_sets(sets, seed)
    if eval_tokens < 0:
        raise UserError(f"--eval-tokens must be 0 or more, got {eval_tokens}")
    history = past_runs(Path(out_dir).resolve().parent if out_dir else home.runs_dir)
    chosen = base is None
    try:
        if chosen:
            base = _default_base(bench_name, budget, backend, device, data_dir or home.data_dir, history)
        run = prepare_run(
            bench_name,
            base,
            diff,
            budget_s=budget,
            seed=1337 if seed is None else seed,
            data_dir=str(Path(data_dir).resolve()) if data_dir else str(home.data_dir),
            backend=backend,
            device=device,
            eval_token_cap=eval_tokens,
            compile=compile_mode,
            tokenizer=tokenizer,
        )
        check_run_fits(run, history)
    except (BackendUnavailable, BudgetError) as exc:
        raise UserError(f"{'base ' + base + ': ' if chosen else ''}{exc}") from None
    run_dir = Path(out_dir).resolve() if out_dir else default_run_dir(home.runs_dir, base, diff, run.tokenizer_name)
    click.echo(f"run_dir: {run_dir}")
    click.echo(f"bench: {run.bench.name} base: {run.base}{' (default here)' if chosen else ''} diff: {dict(run.diff)} tokenizer: {run.tokenizer_name} seed: {run.seed} budget_s: {run.budget_s:g}")
    note = _budget_note(run)
    if note:
        click.echo(note)
    try:
        with _LiveLine() as live:
            outcome = launch(run, run_dir, progress=live.update, timeout_s=timeout)
    except (RunDirError, BudgetError) as exc:
        raise UserError(str(exc)) from None
    except KeyboardInterrupt:
        click.echo(f"interrupted: the run was stopped; {run_dir / 'result.json'} says status abandoned (nothing was measured)", err=True)
        raise SystemExit(130) from None
    _print_summary(outcome)
    if outcome.status != "ok":
        raise UserError(f"run {outcome.status}: {outcome.error}")


def _default_base(bench_name: str, budget, backend: str, device: str, data_dir, history) -> str:
    """The base `train` uses when --base is not given: trainer.step_budget.default_base for the
    benchmark and the hardware this run would train on."""
    from p2pgolf.trainer.backend import resolve_backend
    from p2pgolf.trainer.config import resolve_benchmark
    from p2pgolf.trainer.step_budget import default_base, run_hardware

    bench = resolve_benchmark(bench_name, str(data_dir) if data_dir else None, budget)
    return default_base(bench, run_hardware(resolve_backend(backend), device), bench.budget_s, history)


def _budget_note(run) -> str:
    """A line saying that a run under a non-standard budget is its own benchmark."""
    from p2pgolf.trainer.config import standard_budget_s

    standard = standard_budget_s(run.bench_name)
    if standard is None or float(run.budget_s) == standard:
        return ""
    plain = run.bench_name.split("@", 1)[0]
    return (
        f"note: a {run.budget_s:g}s budget makes this run count for benchmark {run.bench.name} (id {run.bench.id[:12]}), "
        f"not for the network's {plain} ({standard:g}s); its results do not mix with {plain}'s"
    )


def _print_summary(outcome) -> None:
    values = {**(outcome.result.get("metrics") or {}), **outcome.metrics}
    click.echo("---")
    click.echo(f"status: {outcome.status}")
    for name in SUMMARY_FIELDS:
        if name in values:
            click.echo(f"{name}: {_fmt(values[name])}")
    throughput = outcome.result.get("throughput") or {}
    if throughput:
        if throughput.get("cpu_share") is not None:
            click.echo(f"cpu_share: {throughput['cpu_share']:.2f}")
        if throughput.get("usual_tokens_per_s"):
            click.echo(f"usual_tokens_per_s: {throughput['usual_tokens_per_s']:.1f}")
        click.echo(f"degraded: {'yes: ' + throughput['reason'] if throughput.get('degraded') else 'no'}")
    click.echo(f"artifact_sha256: {outcome.result.get('artifact_sha256')}")
    click.echo(f"result: {outcome.run_dir / 'result.json'}")


def _fmt(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.6f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


class _LiveLine:
    """One rich line that is rewritten in place as progress events arrive (only on a terminal)."""

    def __init__(self) -> None:
        from p2pgolf.node.views.plain_console import plain_console

        self.console = plain_console(stderr=True)
        self.live = None
        self.last_print_s = 0.0

    def __enter__(self) -> "_LiveLine":
        if self.console.is_terminal:
            from rich.live import Live

            self.live = Live("starting...", console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)

    def update(self, event) -> None:
        text = _describe(event)
        if self.live is not None:
            self.live.update(text)
        elif event.phase == "training" and (event.step or event.message):
            # Not a terminal: one line every few seconds of training, so logs show the loss fall.
            if event.step == 1 or not event.step or event.elapsed_s - self.last_print_s >= 5.0:
                self.last_print_s = event.elapsed_s
                self.console.print(text, highlight=False)
        elif event.phase in ("loading", "exporting", "done") or (event.phase == "evaluating" and event.message):
            self.console.print(text, highlight=False)


def _describe(event) -> str:
    if event.phase == "training" and event.step:
        return (
            f"step {event.step}  loss {event.train_loss:.4f}  {event.tokens_per_s:,.0f} tok/s  "
            f"{event.time_left_s:.0f}s left of {event.budget_s:.0f}s"
        )
    if event.phase == "training" and event.message:
        return f"training: {event.message}  {event.time_left_s:.0f}s left of {event.budget_s:.0f}s"
    if event.phase == "evaluating" and event.total:
        return f"evaluating {event.done}/{event.total} windows"
    return f"{event.phase}{': ' + event.message if event.message else '...'}"
