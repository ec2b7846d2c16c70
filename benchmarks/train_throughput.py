"""Training throughput (tokens/s) and model FLOPs utilisation (MFU) of a config on this machine.

    python benchmarks/train_throughput.py                      # cpu-small on CPU, naive-baseline on GPU
    python benchmarks/train_throughput.py --base cpu-small --set num_layers=6 --steps 30
    python benchmarks/train_throughput.py --reference /path/to/train_gpt.py   # GPU: vs the challenge script
    python benchmarks/train_throughput.py --json

Both numbers come from the same run as their baseline:
- MFU = model FLOPs per second / the matmul peak measured here, now (fp32 on CPU, bf16 on a
  GPU), so a shared or throttled machine is judged against what it can do at that moment.
  Model FLOPs per token = 6 x (weights used in matmuls, the output head included)
  + 6 x layers x seq_len x dim (causal attention scores and values, forward and backward).
  Muon's Newton-Schulz work is overhead, not model FLOPs.
- On a GPU with --reference PATH (OpenAI's train_gpt.py, fetched by the user; never shipped),
  the reference trains the same config on FineWeb-Edu sample shards on the same GPU, and the
  ratio of our tokens/s to its tokens/s is reported. Without a GPU the output says so.
Timing excludes the first --warmup steps (allocation, compilation) by running warmup steps and
warmup+steps steps and taking the difference; the reference primes its graph with --warmup steps
it undoes and then times --steps steps up to a CUDA synchronise (its final validation line).
The matmul peak is measured before and after training and the higher one kept (a conservative
MFU on a shared machine). Training data: uniformly random token ids (throughput does not
depend on the text). `--backend torch|mlx` picks the trainer.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from p2pgolf.protocol import knobs  # noqa: E402
from p2pgolf.protocol.knobs import mlp_hidden_size  # noqa: E402

SHARED_DATA = REPO.parent / "shared" / "data"
CPU_GOAL_MFU = 0.30
GPU_GOAL_RATIO = 1.10
GPU_GOAL_MFU = 0.35
REFERENCE_VOCAB = 1024  # sp1024, the tokenizer of the shards the reference trains on


def model_flops_per_token(config: dict[str, Any]) -> float:
    """Training FLOPs per token (forward + backward) of the model's matmuls and attention."""
    dim, layers, seq = config["model_dim"], config["num_layers"], config["train_seq_len"]
    kv_dim = dim // config["num_heads"] * config["num_kv_heads"]
    hidden = mlp_hidden_size(config)
    mlp = (3 if config["activation"] == "swiglu" else 2) * dim * hidden
    per_layer = 2 * dim * dim + 2 * dim * kv_dim + mlp  # layers reuse blocks, but each application costs
    head = config["vocab_size"] * dim
    return 6.0 * (layers * per_layer + head) + 6.0 * layers * seq * dim


class RandomTokens:
    """An endless, seeded stream of uniformly random token ids."""

    def __init__(self, vocab: int, seed: int = 0) -> None:
        self.vocab = vocab
        self.rng = np.random.default_rng(seed)

    def take(self, n: int) -> np.ndarray:
        return self.rng.integers(0, self.vocab, n, dtype=np.uint16)


def measure_matmul_peak(device: str) -> tuple[float, str]:
    """Best sustained matmul FLOP/s here now: fp32 on CPU, bf16 on CUDA; and what was run."""
    import torch

    if device.startswith("cuda"):
        n, dtype, reps = 8192, torch.bfloat16, 20
    else:
        n, dtype, reps = 1024, torch.float32, 4
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):
        a @ b
    sync()
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            a @ b
        sync()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best, f"{n}x{n} {str(dtype).removeprefix('torch.')} matmul"


def measure_matmul_peak_mlx(device: str) -> tuple[float, str]:
    """Best sustained MLX matmul FLOP/s here now: bf16 on the Apple GPU, fp32 on the CPU."""
    import mlx.core as mx

    gpu = device == "mps"
    mx.set_default_device(mx.gpu if gpu else mx.cpu)
    n, dtype, reps = (4096, mx.bfloat16, 20) if gpu else (1024, mx.float32, 4)
    a = mx.random.normal((n, n)).astype(dtype)
    b = mx.random.normal((n, n)).astype(dtype)
    mx.eval(a, b)
    for _ in range(2):
        mx.eval(a @ b)
    best = 0.0
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            mx.eval(a @ b)  # one at a time, as a training step's matmuls depend on each other
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t))
    return best, f"{n}x{n} {'bfloat16' if gpu else 'float32'} MLX matmul"


def run_ours(backend: str, config: dict[str, Any], steps: int, warmup: int, device: str, compile_model: bool | None = None) -> dict[str, Any]:
    """tokens/s of our trainer over `steps` steps after `warmup` steps."""
    train = _backend_train(backend)
    vocab = config["vocab_size"]
    extra = {} if compile_model is None else {"compile_model": compile_model}

    def timed(n: int):
        return train(config, lambda: RandomTokens(vocab), budget_s=1e9, seed=0, device=device, max_steps=n, **extra)

    first = timed(warmup)
    full = timed(warmup + steps)
    seconds = full.training_seconds - first.training_seconds
    tokens = full.train_tokens - first.train_tokens
    return {
        "tokens_per_s": tokens / seconds,
        "step_ms": 1000.0 * seconds / steps,
        "grad_accum_steps": full.grad_accum_steps,
        "micro_batch_tokens": full.micro_batch_tokens,
        "final_train_loss": full.final_train_loss,
        "peak_memory_mib": full.extra.get("peak_memory_mib", 0),
    }


def _backend_train(backend: str) -> Callable:
    if backend == "torch":
        from p2pgolf.trainer.train_torch import train

        return train
    if backend == "mlx":
        from p2pgolf.trainer.train_mlx import train

        return train
    raise SystemExit(f"unknown backend {backend!r}; expected torch or mlx")


def run_reference(
    script: Path, config: dict[str, Any], steps: int, warmup: int, timeout_s: float, log_path: Path | None = None
) -> dict[str, Any]:
    """tokens/s of OpenAI's train_gpt.py on FineWeb-Edu sample shards, same config, this GPU.

    The script primes its compiled graph with `warmup` steps that it then undoes (its
    WARMUP_STEPS), then trains `steps` steps. Their time is the train_time of its final
    validation line, which it reads after a CUDA synchronise: the per-step log lines are taken
    before one, so the GPU may still be running queued steps then. Per-step logging is off
    (TRAIN_LOG_EVERY=0) because each logged step synchronises, which our loop does not.
    `log_path` gets its whole output (stdout, then stderr), also when it fails.
    """
    from p2pgolf.trainer.build import build_shards_from_text

    if not script.is_file():
        raise SystemExit(f"--reference {script}: file not found")
    with tempfile.TemporaryDirectory() as tmp:
        built = build_shards_from_text(
            [SHARED_DATA / "fineweb_edu_sample.txt"], SHARED_DATA / "fineweb_1024_bpe.model", Path(tmp) / "built",
            val_fraction=0.05, doc_split="line",
        )  # fmt: skip
        data = Path(tmp) / "fineweb10B_sp1024"
        data.mkdir()
        for split, files in (("train", built.train_files), ("val", built.val_files)):
            for i, path in enumerate(files):
                (data / f"fineweb_{split}_{i:06d}.bin").symlink_to(path)
        env = {
            **os.environ,
            "DATA_PATH": str(data),
            "TOKENIZER_PATH": str(SHARED_DATA / "fineweb_1024_bpe.model"),
            "ITERATIONS": str(steps),
            "WARMUP_STEPS": str(warmup),
            "MAX_WALLCLOCK_SECONDS": "0",
            "VAL_LOSS_EVERY": "0",  # validation only after the last step
            "TRAIN_LOG_EVERY": "0",
            "RUN_ID": "p2pgolf-throughput",
            "SEED": "0",
        }
        for key in (*_REFERENCE_KNOBS, "vocab_size", "train_seq_len", "train_batch_tokens"):
            env[key.upper()] = str(config[key])
        env["MLP_MULT"] = str(int(config["mlp_mult"]))
        command = [sys.executable, str(script.resolve())]
        try:
            proc = subprocess.run(command, cwd=tmp, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired as exc:
            out = _text(exc.stdout) + _text(exc.stderr)
            _write_log(log_path, out)
            raise SystemExit(f"reference run passed its {timeout_s:.0f}s timeout; its last lines:\n{_tail(out, 15)}") from None
    _write_log(log_path, proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"reference run failed (exit code {proc.returncode}); its last lines:\n{_tail(proc.stdout + proc.stderr, 25)}")
    final = [int(ms) for n, ms in re.findall(r"^step:(\d+)/\d+ val_loss:\S+ val_bpb:\S+ train_time:(\d+)ms", proc.stdout, re.M) if int(n) == steps]
    if not final or final[0] <= 0:
        raise SystemExit(f"could not read the training time of step {steps} from the reference's log:\n{_tail(proc.stdout, 10)}")
    per_step_s = final[0] / 1000.0 / steps
    return {
        "tokens_per_s": config["train_batch_tokens"] / per_step_s,
        "step_ms": 1000.0 * per_step_s,
        "steps": steps,
        "warmup_steps": warmup,
        "script_sha256": hashlib.sha256(script.read_bytes()).hexdigest(),
    }


# Knobs the reference script reads from the environment under their upper-case names.
_REFERENCE_KNOBS = (
    "num_layers", "model_dim", "num_heads", "num_kv_heads", "rope_base", "logit_softcap", "qk_gain_init",
    "tied_embed_init_std", "muon_backend_steps", "grad_clip_norm",
)  # fmt: skip


def _text(value: str | bytes | None) -> str:
    if value is None:
        return ""
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


def _write_log(path: Path | None, text: str) -> None:
    if path is not None:
        path.write_text(text, encoding="utf-8")


def _note(message: str) -> None:
    """Progress on stderr, so a run that is stopped part-way still shows what it measured."""
    print(message, file=sys.stderr, flush=True)


def reference_compatible(config: dict[str, Any]) -> str | None:
    """Why the reference script cannot run this config, or None."""
    base = knobs.resolve("naive-baseline", {})
    unsupported = [
        k for k in ("activation", "unique_blocks", "tie_embeddings", "ema_decay", "grad_accum_steps", "mlp_hidden")
        if config[k] != base[k]
    ]  # fmt: skip
    if config["mlp_mult"] != int(config["mlp_mult"]):
        unsupported.append("mlp_mult")
    if config["logit_softcap"] == 0:  # ours: no cap; the reference divides by it
        unsupported.append("logit_softcap=0")
    reasons = [f"the reference script has no knob for {', '.join(unsupported)}"] if unsupported else []
    if config["vocab_size"] != REFERENCE_VOCAB:  # it checks VOCAB_SIZE against its tokenizer's
        reasons.append(f"vocab_size={config['vocab_size']}, but the reference trains on sp{REFERENCE_VOCAB} shards")
    return "; ".join(reasons) or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default=None, help="base config (default: cpu-small on CPU, naive-baseline on GPU)")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KNOB=VALUE")
    parser.add_argument("--backend", choices=("torch", "mlx"), default="torch")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, mps")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 10 on CPU, 50 on GPU)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 on CPU, 10 on GPU)")
    parser.add_argument("--threads", type=int, default=0, help="CPU threads for torch (0: torch's default)")
    parser.add_argument("--compile", action="store_true", help="torch.compile on CPU too (on CUDA it always is); compile time is not timed")
    parser.add_argument("--reference", type=Path, default=None, help="path to OpenAI's train_gpt.py (GPU only)")
    parser.add_argument("--reference-timeout", type=float, default=900.0)
    parser.add_argument("--reference-log", type=Path, default=None, help="write the reference run's whole output here")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)

    from p2pgolf.trainer.backend import BackendUnavailable, is_apple_silicon, resolve_backend
    from p2pgolf.trainer.hardware import detect_hardware

    try:
        resolve_backend(args.backend)
    except BackendUnavailable as exc:
        raise SystemExit(str(exc)) from None
    torch = None
    if args.backend == "torch":
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
    device = args.device
    if device == "auto":
        if args.backend == "mlx":  # MLX runs on the Apple GPU or the CPU, never CUDA
            device = "mps" if is_apple_silicon() else "cpu"
        else:
            device = "cuda" if torch.cuda.is_available() else "cpu"
    gpu = device.startswith("cuda")
    base = args.base or ("naive-baseline" if gpu else "cpu-small")
    diff = {}
    for item in args.sets:
        name, _, value = item.partition("=")
        diff[name] = knobs.knob(name).parse(value)
    config = knobs.resolve(base, diff)
    steps = args.steps or (50 if gpu else 10)
    warmup = args.warmup if args.warmup is not None else (10 if gpu else 2)
    hw = detect_hardware("cuda" if gpu else ("mps" if device == "mps" else "cpu"))

    if args.backend == "mlx":
        peak, peak_what = measure_matmul_peak_mlx(device)
        if device == "cpu" and importlib.util.find_spec("torch") is not None:
            # mlx[cpu]'s matmul is far from what the processor can do; judge against the better peak.
            peak, peak_what = max((peak, peak_what), measure_matmul_peak("cpu"))
    else:
        peak, peak_what = measure_matmul_peak(device)
    compile_model = True if args.compile and args.backend == "torch" else None
    ours = run_ours(args.backend, config, steps, warmup, device, compile_model=compile_model)
    _note(f"ours: {ours['tokens_per_s']:,.0f} tokens/s, {ours['step_ms']:.1f} ms/step, grad_accum {ours['grad_accum_steps']}")
    if args.backend == "torch":
        # Measured again after training and the higher kept: on a shared machine this errs
        # towards a lower (not flattering) MFU.
        peak = max(peak, measure_matmul_peak(device)[0])
    flops_token = model_flops_per_token(config)
    mfu = ours["tokens_per_s"] * flops_token / peak
    out: dict[str, Any] = {
        "device": f"{hw.accel}:{hw.model}:x{hw.count}",
        "backend": args.backend,
        "base": base,
        "diff": knobs.normalise_diff(base, diff),
        "steps": steps,
        "warmup_steps": warmup,
        "threads": torch.get_num_threads() if torch is not None and not gpu else None,
        "compiled": bool(gpu or compile_model),
        "train_batch_tokens": config["train_batch_tokens"],
        "train_seq_len": config["train_seq_len"],
        "params": knobs.estimate_parameters(config),
        "flops_per_token": flops_token,
        "tokens_per_s": ours["tokens_per_s"],
        "step_ms": ours["step_ms"],
        "grad_accum_steps": ours["grad_accum_steps"],
        "peak_memory_mib": ours["peak_memory_mib"],
        "model_flops_per_s": ours["tokens_per_s"] * flops_token,
        "peak_flops_per_s": peak,
        "peak_measured_with": peak_what,
        "mfu": mfu,
        "goal": None,
        "reference": None,
        "note": "",
    }
    if gpu:
        out["goal"] = {"ratio_vs_reference": GPU_GOAL_RATIO, "mfu": GPU_GOAL_MFU}
        if args.reference is None:
            out["note"] = "no --reference given: only our tokens/s and MFU were measured"
        elif (why := reference_compatible(config)) is not None:
            out["note"] = f"reference not run: {why}"
        else:
            if torch is not None:
                # Our run's cached blocks would otherwise stay reserved in this process while
                # the reference trains in another one on the same GPU.
                gc.collect()
                torch.cuda.empty_cache()
            _note(f"running the reference {args.reference} ({warmup} priming + {steps} timed steps)")
            ref = run_reference(args.reference, config, steps, warmup, args.reference_timeout, args.reference_log)
            _note(f"reference: {ref['tokens_per_s']:,.0f} tokens/s, {ref['step_ms']:.1f} ms/step")
            out["reference"] = {**ref, "ratio": ours["tokens_per_s"] / ref["tokens_per_s"]}
    else:
        out["goal"] = {"mfu": CPU_GOAL_MFU}
        where = "the Apple GPU's bf16" if device == "mps" else "this CPU's fp32"
        out["note"] = f"no CUDA GPU here: MFU is against {where} matmul peak; the reference comparison needs a GPU"
    if args.json:
        print(json.dumps(out))
    else:
        _print_table(out)
    return 0


def _print_table(out: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="p2pgolf training throughput")
    table.add_column("what")
    table.add_column("value", justify="right")
    rows = [
        ("machine", out["device"]),
        ("backend", out["backend"]),
        ("config", f"{out['base']} {out['diff'] or ''}".strip()),
        ("batch", f"{out['train_batch_tokens']} tokens, seq {out['train_seq_len']}, accum {out['grad_accum_steps']}"),
        ("steps timed (after warm-up)", f"{out['steps']} (after {out['warmup_steps']})"),
        ("threads", str(out["threads"]) if out["threads"] else "-"),
        ("torch.compile", "yes" if out["compiled"] else "no"),
        ("parameters", f"{out['params']:,}"),
        ("tokens/s", f"{out['tokens_per_s']:,.0f}"),
        ("step", f"{out['step_ms']:.1f} ms"),
        ("model TFLOP/s", f"{out['model_flops_per_s'] / 1e12:.4f}"),
        (f"peak TFLOP/s ({out['peak_measured_with']}, measured now)", f"{out['peak_flops_per_s'] / 1e12:.4f}"),
        ("MFU (vs measured peak)", f"{out['mfu']:.1%}  (goal {out['goal'].get('mfu', 0):.0%})"),
    ]
    if out["reference"]:
        ref = out["reference"]
        rows.append(("reference train_gpt.py tokens/s", f"{ref['tokens_per_s']:,.0f}"))
        rows.append(("ratio ours / reference", f"{ref['ratio']:.3f}x  (goal {out['goal']['ratio_vs_reference']:.2f}x)"))
    for what, value in rows:
        table.add_row(what, value)
    console = Console()
    console.print(table)
    if out["note"]:
        console.print(out["note"])


if __name__ == "__main__":
    sys.exit(main())
