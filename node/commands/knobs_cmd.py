"""`p2pgolf knobs`: the knob vocabulary a candidate may set, and the named base configs.

For each knob: its group, type, allowed range or choices, the challenge baseline's default and
what it means; then each base config with the knobs where it differs from the baseline.
`--json` prints one JSON document: {"knobs": [...], "base_configs": {name: full config}}.
Everything comes from protocol.knobs, the vocabulary records are checked against.
"""

from __future__ import annotations

import json

import click


@click.command("knobs")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def knobs(as_json: bool) -> None:
    """List the knobs a candidate may set, their ranges, and the base configs."""
    from p2pgolf.protocol.knobs import BASE_CONFIGS, DEFAULTS, KNOBS

    if as_json:
        doc = {
            "knobs": [
                {
                    "name": k.name,
                    "group": k.group,
                    "type": k.type.__name__,
                    "default": k.default,
                    "low": k.low,
                    "high": k.high,
                    "choices": list(k.choices) if k.choices else None,
                    "range": k.describe_range(),
                    "log_scale": k.log_scale,
                    "help": k.help,
                }
                for k in KNOBS.values()
            ],
            "base_configs": {name: dict(config) for name, config in BASE_CONFIGS.items()},
        }
        click.echo(json.dumps(doc))
        return
    from rich.table import Table
    from rich.text import Text

    from p2pgolf.node.views.plain_console import plain_console

    console = plain_console()
    table = Table(title=f"{len(KNOBS)} knobs (set with --set NAME=VALUE)", title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    table.add_column("knob", no_wrap=True)
    table.add_column("type", no_wrap=True)
    table.add_column("range", overflow="fold", max_width=14)
    table.add_column("default", overflow="fold", max_width=10)
    table.add_column("meaning", overflow="fold", ratio=1)
    group = None
    for k in KNOBS.values():
        if k.group != group:
            group = k.group
            table.add_row(Text(group, style="bold"), "", "", "", "")
        table.add_row(f"  {k.name}", k.type.__name__, k.describe_range(), _value(k.default), k.help)
    console.print(table)
    console.print()
    bases = Table(title="base configs (--base NAME): where each differs from the defaults above", title_justify="left", box=None, pad_edge=False, padding=(0, 1, 0, 0))
    bases.add_column("base", no_wrap=True)
    bases.add_column("differences", overflow="fold", ratio=1)
    for name, config in BASE_CONFIGS.items():
        diff = [f"{key}={_value(value)}" for key, value in config.items() if value != DEFAULTS[key]]
        bases.add_row(name, " ".join(diff) or "(the defaults)")
    console.print(bases)


def _value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
