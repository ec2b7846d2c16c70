"""`p2pgolf data build|fetch` from the command line: output, and one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from p2pgolf.node.cli import cli
from p2pgolf.trainer.datasets import custom_benchmark

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
MODEL = DATA / "fineweb_1024_bpe.model"


def test_build_prints_the_custom_benchmark_id_of_what_it_wrote(tmp_path):
    text = tmp_path / "shakespeare.txt"
    text.write_text(DATA.joinpath("tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    out = tmp_path / "bench"
    result = CliRunner().invoke(cli, ["--home", str(tmp_path / "home"), "data", "build", "--tokenizer", str(MODEL),
                                      "--out", str(out), "--val-docs", "20", "--budget", "300", str(text)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "p2pgolf-dataset.json").read_text())
    assert manifest["docs_val"] == 20 and manifest["docs_train"] > 100
    assert f"id {custom_benchmark(out, budget_s=300).id}" in result.output


def test_build_mistakes_are_one_line_errors(tmp_path):
    runner = CliRunner()
    base = ["--home", str(tmp_path / "home"), "data", "build", "--out", str(tmp_path / "o")]
    result = runner.invoke(cli, [*base, "--tokenizer", str(tmp_path / "none.model"), str(MODEL)])
    assert result.exit_code == 1 and result.output.strip() == f"error: {tmp_path / 'none.model'}: tokenizer model not found"
    text = tmp_path / "t.txt"
    text.write_text("one\n\ntwo\n", encoding="utf-8")
    result = runner.invoke(cli, [*base, "--tokenizer", str(MODEL), "--val-docs", "1", "--val-fraction", "0.5", str(text)])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and "exactly one of val_docs" in result.output


def test_fetch_that_asks_too_much_exits_with_one_line(tmp_path):
    env = {**os.environ, "HF_ENDPOINT": "http://127.0.0.1:9", "HF_HUB_DISABLE_TELEMETRY": "1"}
    manifest = {"datasets": [{"name": "fineweb10B_sp1024", "tokenizer_name": "t", "stats": {"files_val": 1, "files_train": 2}}],
                "tokenizers": [{"name": "t", "model_path": "tokenizers/fineweb_1024_bpe.model"}]}
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    run = subprocess.run([sys.executable, "-m", "p2pgolf.node.cli", "data", "fetch", "--data-dir", str(tmp_path), "--train-shards", "5", "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1
    assert run.stderr == "error: the challenge has 2 training shards; --train-shards 5 asks for more\n"
    (tmp_path / "manifest.json").unlink()
    run = subprocess.run([sys.executable, "-m", "p2pgolf.node.cli", "data", "fetch", "--data-dir", str(tmp_path), "--quiet"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert run.returncode == 1 and run.stderr.count("\n") == 1
    assert run.stderr.startswith("error: datasets/manifest.json: could not reach it on willdepueoai/parameter-golf")
