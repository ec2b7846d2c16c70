"""Our trainer as one self-contained `train_gpt.py`, for a built-in candidate's submission folder.

The challenge runs `torchrun --standalone --nproc_per_node=8 train_gpt.py` inside the record
folder, with everything the run needs in that one file. `bundle_source` writes such a file:
the sources of every `protocol/` and `trainer/` module the torch backend imports, with their
docstrings removed (`ast.unparse`: the same statements p2pgolf ran, without the prose), packed
as one lzma stream in base85 as the competition's records pack their code, and served by an
import hook; the candidate (base, diff, tokenizer) and its benchmark baked in, and an entry point
that trains, exports the artifact, reloads it and prints the challenge's final line
`final_int<bits>_<compressor>_roundtrip_exact val_loss:X val_bpb:Y` from the round-tripped model.
The artifact's code bytes are this file's own size.

Environment the file reads (the challenge's names where it has them): DATA_PATH (the data
directory: for the challenge, the one `p2pgolf data fetch` fills; for a custom benchmark, the one
`p2pgolf data build` wrote), SEED, RUN_ID (output directory under ./logs), ITERATIONS (stop
after this many steps; default: the wall-clock budget alone decides, as the rules require),
DATA_PATH may also name the challenge's shard folder (./data/datasets/fineweb10B_sp1024), as
the challenge's own command does. EVAL_TOKENS (score at most this many validation targets; default all), DEVICE (auto|cpu|cuda).
Third-party packages it imports: numpy, torch, sentencepiece, and zstandard or brotli when the
candidate's compressor is one of those (requirements.txt, `requirements_for`).
"""

from __future__ import annotations

import ast
import base64
import functools
import json
import lzma
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
# What each backend runs; the bundle holds these and every protocol/ and trainer/ module they
# import (found by reading their import statements, so the set does not depend on what the
# current process happens to have imported).
ENTRY_MODULES = {
    "torch": ("p2pgolf.trainer.run_torch",),
    "mlx": ("p2pgolf.trainer.run_mlx",),
}
_PACKAGES = ("p2pgolf.protocol", "p2pgolf.trainer")
REQUIREMENTS = "numpy\ntorch\nsentencepiece\n"
# The compressors outside the standard library, by the compressor knob's value.
_COMPRESSOR_PACKAGES = {"zstd": "zstandard", "brotli": "brotli"}


def requirements_for(knobs: Mapping[str, Any]) -> str:
    """requirements.txt for a bundled candidate: REQUIREMENTS, plus its compressor's package."""
    extra = _COMPRESSOR_PACKAGES.get(knobs.get("compressor", ""))
    return REQUIREMENTS + (f"{extra}\n" if extra else "")


def module_path(name: str) -> Path:
    """The source file of one of our modules (a package's __init__.py)."""
    rel = Path(*name.removeprefix("p2pgolf.").split("."))
    return _REPO / rel / "__init__.py" if (_REPO / rel).is_dir() else (_REPO / rel).with_suffix(".py")


def bundled_modules(backend: str = "torch") -> dict[str, str]:
    """module name -> source (docstrings removed) of every protocol/ and trainer/ module that
    `backend`'s entry modules import, at module level or inside functions, transitively."""
    if backend not in ENTRY_MODULES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {', '.join(ENTRY_MODULES)}")
    out: dict[str, str] = {}
    todo = [*ENTRY_MODULES[backend], *_PACKAGES]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        tree = ast.parse(module_path(name).read_text(encoding="utf-8"))
        todo.extend(_our_imports(tree, name))
        out[name] = ast.unparse(_without_docstrings(tree))
    out["p2pgolf"] = ""  # the namespace both rooms live in, served empty
    return dict(sorted(out.items()))


def pack_modules(modules: Mapping[str, str]) -> str:
    """The modules as the bundle embeds them: JSON, lzma (preset 9, extreme), base85."""
    raw = json.dumps(dict(modules), sort_keys=True, separators=(",", ":")).encode()
    return base64.b85encode(lzma.compress(raw, preset=9 | lzma.PRESET_EXTREME)).decode("ascii")


@functools.lru_cache(maxsize=None)
def bundle_size(backend: str = "torch") -> int:
    """Bytes of the bundle of a default candidate with `backend`'s modules: what a submission's
    train_gpt.py costs, and so the code bytes every run counts (trainer.artifact.code_bytes)."""
    candidate = {"bench_name": "smoke", "base": "smoke-tiny", "diff": {}, "seed": 0, "budget_s": 600.0}
    return len(_render(candidate=candidate, title="smoke-tiny + {}", modules=bundled_modules(backend)).encode())


def _our_imports(tree: ast.Module, name: str) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
            found.extend(f"{node.module}.{a.name}" for a in node.names)  # `from p2pgolf.trainer import x`
        elif isinstance(node, ast.Import):
            found.extend(a.name for a in node.names)
    return [m for m in found if m.startswith(tuple(p + "." for p in _PACKAGES)) and module_path(m).is_file()]


def _without_docstrings(tree: ast.Module) -> ast.Module:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]
    return tree


def bundle_source(*, bench_name: str, base: str, diff: Mapping[str, Any], seed: int, budget_s: float, title: str = "", data_dir: str | None = None) -> str:
    """The text of a self-contained train_gpt.py for the built-in candidate (base, diff).
    The config is checked here (a custom benchmark needs its `data_dir` for that), not on 8 GPUs."""
    from p2pgolf.trainer.config import make_run_config

    make_run_config(bench_name, base, diff, seed=seed, budget_s=budget_s, data_dir=data_dir)
    candidate = {"bench_name": bench_name, "base": base, "diff": dict(diff), "seed": seed, "budget_s": float(budget_s)}
    return _render(candidate=candidate, title=title or f"{base} + {json.dumps(dict(diff), sort_keys=True)}", modules=bundled_modules("torch"))


def _render(*, candidate: Mapping[str, Any], title: str, modules: Mapping[str, str]) -> str:
    packages = sorted(n for n in modules if n in ("p2pgolf", *_PACKAGES) or module_path(n).name == "__init__.py")
    return _TEMPLATE.format(title=title, candidate=json.dumps(dict(candidate), sort_keys=True), packages=repr(tuple(packages)), packed=pack_modules(modules))


_TEMPLATE = '''"""p2pgolf candidate {title}: our trainer bundled into one file (generated; see p2pgolf trainer/bundle.py).

Run: torchrun --standalone --nproc_per_node=8 train_gpt.py
"""
import base64
import importlib.abc
import importlib.util
import json
import lzma
import os
import sys
import time

CANDIDATE = json.loads({candidate!r})
PACKAGES = {packages}
MODULES = json.loads(lzma.decompress(base64.b85decode("{packed}")))


class _Bundled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the embedded protocol/ and trainer/ modules before anything installed."""

    def find_spec(self, name, path=None, target=None):
        if name in MODULES:
            return importlib.util.spec_from_loader(name, self, is_package=name in PACKAGES)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        name = module.__name__
        module.__file__ = os.path.join(os.path.dirname(os.path.abspath(__file__)), "<bundled>", *name.split(".")) + ".py"
        if name in PACKAGES:
            module.__path__ = []
        exec(compile(MODULES[name], module.__file__, "exec"), module.__dict__)


sys.meta_path.insert(0, _Bundled())


def main():
    from p2pgolf.trainer import artifact
    from p2pgolf.trainer.config import make_run_config
    from p2pgolf.trainer.run_torch import run_torch

    own_bytes = os.path.getsize(os.path.abspath(__file__))
    artifact.code_bytes = lambda backend: own_bytes  # the code counted is this one file
    rank = int(os.environ.get("RANK", "0"))
    run_dir = os.path.join("logs", os.environ.get("RUN_ID", time.strftime("%Y%m%d-%H%M%S")))
    os.makedirs(run_dir, exist_ok=True)
    extra = {{"max_steps": int(os.environ["ITERATIONS"])}} if os.environ.get("ITERATIONS") else {{}}
    bench = CANDIDATE["bench_name"]
    data_dir = os.environ.get("DATA_PATH", "./data")
    if os.path.basename(os.path.normpath(data_dir)).startswith("fineweb10B_"):
        data_dir = os.path.dirname(os.path.dirname(os.path.normpath(data_dir)))  # the challenge's DATA_PATH names the shard folder
    run = make_run_config(
        bench, CANDIDATE["base"], CANDIDATE["diff"], seed=int(os.environ.get("SEED", CANDIDATE["seed"])),
        budget_s=CANDIDATE["budget_s"], device=os.environ.get("DEVICE", "auto"), backend="torch",
        eval_token_cap=int(os.environ.get("EVAL_TOKENS", "0")), compile=os.environ.get("COMPILE", "auto"),
        data_dir=data_dir, extra=extra,
    )

    def log(line):
        if rank == 0:
            print(line, flush=True)
            with open(os.path.join(run_dir, "log.txt"), "a", encoding="utf-8") as f:
                f.write(line + "\\n")

    result = run_torch(run, __import__("pathlib").Path(run_dir), log=log, emit=lambda event: None)
    if rank == 0:
        m = result["metrics"]
        k = run.knobs
        print(f"steps:{{m['steps']}} train_tokens:{{m['train_tokens']}} artifact_bytes:{{m['artifact_bytes']}} status:{{result['status']}}")
        print(f"final_int{{k['quant_bits']}}_{{k['compressor']}}_roundtrip_exact val_loss:{{m['val_loss']:.8f}} val_bpb:{{m['val_bpb']:.8f}}")


if __name__ == "__main__":
    main()
'''
