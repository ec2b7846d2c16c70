"""`p2pgolf data fetch|build`: get the challenge data, or make a benchmark from your own text.

Every mistake a user can make (bad option, missing file, unreachable hub, corrupt shard) ends
as one line naming what was wrong; a fetch interrupted by Ctrl-C or a lost connection
continues where it stopped when run again.
"""

from __future__ import annotations

from pathlib import Path

import click

from p2pgolf.node.cli import UserError


@click.group()
def data() -> None:
    """Fetch the challenge data or build shards from your own text."""


@data.command()
@click.option("--train-shards", type=int, default=1, show_default=True, help="Training shards to download (100M tokens each).")
@click.option("--data-dir", type=click.Path(file_okay=False), help="Where to put the data (default: the node's data directory).")
@click.option("--repo", default=None, help="Hub dataset repo (default: the challenge's willdepueoai/parameter-golf).")
@click.option("--revision", default="main", show_default=True, help="Branch, tag or commit of the dataset repo.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.option("--variant", default="sp1024", show_default=True, type=click.Choice(["sp1024", "sp4096", "sp8192"]), help="Tokenizer variant of the dataset.")
@click.pass_obj
def fetch(home, train_shards: int, data_dir: str | None, repo: str | None, revision: str, quiet: bool, variant: str) -> None:
    """Download a variant's validation shards, N training shards and its tokenizer (resumable)."""
    from p2pgolf.trainer.fetch import REPO_ID, FetchError, fetch_challenge_data

    target = Path(data_dir) if data_dir else home.data_dir
    try:
        result = fetch_challenge_data(target, train_shards, repo_id=repo or REPO_ID, revision=revision, progress=not quiet, variant=variant)
    except FetchError as exc:
        raise UserError(str(exc)) from None
    click.echo(
        f"challenge data ({variant}) in {result.data_dir}: {result.val_shards} validation and {result.train_shards} training shards "
        f"({len(result.downloaded)} downloaded, {len(result.present)} already present, {result.bytes_received:,} bytes received)"
    )


@data.command()
@click.option("--tokenizer", "tokenizer", required=True, type=click.Path(dir_okay=False), help="SentencePiece .model file.")
@click.option("--out", "out", required=True, type=click.Path(file_okay=False), help="New or empty output directory.")
@click.option("--val-docs", type=int, help="The first N documents are the validation split.")
@click.option("--val-fraction", type=float, help="The first fraction of documents (0 < f < 1) are the validation split (0.1 if neither is given).")
@click.option(
    "--doc-split",
    type=click.Choice(["blank-line", "line", "file"]),
    default="blank-line",
    show_default=True,
    help="How plain text divides into documents (.jsonl files: one document per line's \"text\").",
)
@click.option("--shard-tokens", type=int, default=100_000_000, show_default=True, help="Tokens per shard.")
@click.option("--name", help="Label of the dataset (default: the output directory's name).")
@click.option("--budget", "budget_s", type=float, default=600.0, show_default=True, help="Training budget in seconds for the printed benchmark id.")
@click.argument("text_files", nargs=-1, required=True, type=click.Path(dir_okay=False))
def build(tokenizer: str, out: str, val_docs: int | None, val_fraction: float | None, doc_split: str,
          shard_tokens: int, name: str | None, budget_s: float, text_files: tuple[str, ...]) -> None:
    """Tokenize TEXT_FILES into challenge-format shards that define a custom benchmark."""
    from p2pgolf.protocol.errors import ProtocolError
    from p2pgolf.trainer.build import BuildError, build_shards_from_text
    from p2pgolf.trainer.datasets import custom_benchmark

    if val_docs is None and val_fraction is None:
        val_fraction = 0.1
    try:
        result = build_shards_from_text(
            list(text_files), tokenizer, out, val_docs=val_docs, val_fraction=val_fraction,
            doc_split=doc_split, shard_tokens=shard_tokens, name=name,
        )
        bench = custom_benchmark(result.out_dir, budget_s=budget_s)
    except (BuildError, ProtocolError, ValueError) as exc:
        raise UserError(str(exc)) from None
    click.echo(f"built {result.out_dir}: {result.docs_val} validation documents ({result.tokens_val:,} tokens), "
               f"{result.docs_train} training documents ({result.tokens_train:,} tokens)")
    click.echo(f"benchmark {bench.name} id {bench.id}")
