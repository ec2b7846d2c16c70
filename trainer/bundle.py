"""Our trainer as one self-contained `train_gpt.py`, for a built-in candidate's submission folder.

The challenge runs `torchrun --standalone --nproc_per_node=8 train_gpt.py` inside the record
folder, with everything the run needs in that one file. `bundle_source` writes such a file:
the sources of every `protocol/` and `trainer/` module the torch backend imports, embedded as
strings and served by an import hook (so the modules are the same code p2pgolf ran, not a
rewrite), the candidate (base, diff, tokenizer) and its benchmark baked in, and an entry point
that trains, exports the artifact, reloads it and prints the challenge's final line
`final_int<bits>_<compressor>_roundtrip_exact val_loss:X val_bpb:Y` from the round-tripped model.
The artifact's code bytes are this file's own size.

Environment the file reads (the challenge's names where it has them): DATA_PATH (the data
directory: for the challenge, the one `p2pgolf data fetch` fills; for a custom benchmark, the one
`p2pgolf data build` wrote), SEED, RUN_ID (output directory under ./logs), ITERATIONS (stop
after this many steps; default: the wall-clock budget alone decides, as the rules require),
DATA_PATH may also name the challenge's shard folder (./data/datasets/fineweb10B_sp1024), as
the challenge's own command does. EVAL_TOKENS (score at most this many validation targets; default all), DEVICE (auto|cpu|cuda).
Third-party packages it imports: numpy, torch, sentencepiece (requirements.txt).
"""

from __future__ import annotations

import importlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

_REPO = Path(__file__).resolve().parents[1]
# What the torch backend runs, imported to find every repository module it pulls in.
_ENTRY_MODULES = (
    "p2pgolf.trainer.run_torch", "p2pgolf.trainer.run_common", "p2pgolf.trainer.train_torch", "p2pgolf.trainer.evaluate_torch", "p2pgolf.trainer.model_torch",
    "p2pgolf.trainer.muon_torch", "p2pgolf.trainer.datasets", "p2pgolf.trainer.artifact", "p2pgolf.trainer.hardware", "p2pgolf.trainer.config", "p2pgolf.trainer.smoke",
    "p2pgolf.trainer.eval_plan", "p2pgolf.trainer.byte_accounting", "p2pgolf.trainer.memory", "p2pgolf.trainer.schedule", "p2pgolf.trainer.shards", "p2pgolf.trainer.progress",
)  # fmt: skip
REQUIREMENTS = "numpy\ntorch\nsentencepiece\n"


def bundled_modules() -> dict[str, str]:
    """module name -> source of every protocol/ and trainer/ module the torch backend imports."""
    for name in _ENTRY_MODULES:
        importlib.import_module(name)
    out: dict[str, str] = {}
    for name, module in sorted(sys.modules.items()):
        path = getattr(module, "__file__", None)
        if not path or not (name == "protocol" or name == "trainer" or name.startswith(("protocol.", "trainer."))):
            continue
        p = Path(path).resolve()
        if _REPO not in p.parents:
            continue
        out[name] = p.read_text(encoding="utf-8")
    for package in ("protocol", "trainer"):
        out.setdefault(package, (_REPO / package / "__init__.py").read_text(encoding="utf-8"))
    return out


def bundle_source(*, bench_name: str, base: str, diff: Mapping[str, Any], seed: int, budget_s: float, title: str = "", data_dir: str | None = None) -> str:
    """The text of a self-contained train_gpt.py for the built-in candidate (base, diff).
    The config is checked here (a custom benchmark needs its `data_dir` for that), not on 8 GPUs."""
    from p2pgolf.trainer.config import make_run_config

    make_run_config(bench_name, base, diff, seed=seed, budget_s=budget_s, data_dir=data_dir)
    candidate = {"bench_name": bench_name, "base": base, "diff": dict(diff), "seed": seed, "budget_s": float(budget_s)}
    modules = bundled_modules()
    packages = sorted(n for n in modules if n in ("protocol", "trainer"))
    return _TEMPLATE.format(
        title=title or f"{base} + {json.dumps(dict(diff), sort_keys=True)}",
        candidate=json.dumps(candidate, sort_keys=True),
        packages=repr(tuple(packages)),
        modules="{\n" + "".join(f"    {name!r}: {src!r},\n" for name, src in modules.items()) + "}",
    )


_TEMPLATE = '''"""p2pgolf candidate {title}: our trainer bundled into one file (generated; see p2pgolf trainer/bundle.py).

Run: torchrun --standalone --nproc_per_node=8 train_gpt.py
"""
import importlib.abc
import importlib.util
import json
import os
import sys
import time

CANDIDATE = json.loads({candidate!r})
PACKAGES = {packages}
MODULES = {modules}


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
