"""A tiny MLX training script in the challenge's train_gpt_mlx.py conventions, for p2pgolf's tests.

Run with plain `python` (never torchrun). Hyperparameters come from the environment, the data
are challenge-format byte shards under DATA_PATH (one byte per token), training stops at
ITERATIONS or MAX_WALLCLOCK_SECONDS, the weights are int8-quantized with numpy, pickled,
zlib-compressed to final_model.int8.ptz, reloaded, and scored; the last line is the round-trip line.
"""

import glob
import math
import os
import pickle
import time
import zlib

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten


class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data")
    tokenizer_path = os.environ.get("TOKENIZER_PATH", "")
    seed = int(os.environ.get("SEED", 1337))
    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))
    iterations = int(os.environ.get("ITERATIONS", 60))
    vocab_size = int(os.environ.get("VOCAB_SIZE", 256))
    model_dim = int(os.environ.get("MODEL_DIM", 32))
    train_seq_len = int(os.environ.get("TRAIN_SEQ_LEN", 64))
    batch_size = int(os.environ.get("BATCH_SIZE", 16))
    lr = float(os.environ.get("LR", 0.01))
    val_tokens = int(os.environ.get("VAL_TOKENS", 8 * 1024))


def load_tokens(pattern):
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no shards match {pattern}")
    out = []
    for name in files:
        header = np.fromfile(name, dtype="<i4", count=256)
        if header[0] != 20240520 or header[1] != 1:
            raise ValueError(f"{name}: not a shard")
        out.append(np.fromfile(name, dtype="<u2", offset=1024, count=int(header[2])))
    return np.concatenate(out).astype(np.int32)


class TinyLM(nn.Module):
    """Previous and current token -> next token: two embeddings, one MLP, a tied head."""

    def __init__(self, args):
        super().__init__()
        self.embed = nn.Embedding(args.vocab_size, args.model_dim)
        self.prev = nn.Embedding(args.vocab_size, args.model_dim)
        self.fc = nn.Linear(args.model_dim, args.model_dim * 2)
        self.proj = nn.Linear(args.model_dim * 2, args.model_dim)

    def __call__(self, x):
        prev = mx.concatenate([x[:, :1], x[:, :-1]], axis=1)
        h = self.embed(x) + self.prev(prev)
        h = h + self.proj(mx.square(nn.relu(self.fc(h))))
        return self.embed.as_linear(h)


def loss_fn(model, x, y):
    logits = model(x)
    return nn.losses.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1), reduction="mean")


def evaluate(model, val, args):
    n = (min(len(val), args.val_tokens + 1) - 1) // args.train_seq_len * args.train_seq_len
    x = mx.array(val[:n].reshape(-1, args.train_seq_len))
    y = mx.array(val[1 : n + 1].reshape(-1, args.train_seq_len))
    loss = loss_fn(model, x, y).item()
    return loss, loss / math.log(2.0)  # one byte per token: bits per token = bits per byte


def quantize(params):
    out = {}
    for name, w in tree_flatten(params):
        w = np.array(w.astype(mx.float32))
        if w.ndim == 2:
            scale = np.maximum(np.abs(w).max(axis=1, keepdims=True), 1e-8) / 127.0
            out[name] = ("int8", np.round(w / scale).astype(np.int8), scale.astype(np.float16))
        else:
            out[name] = ("fp16", w.astype(np.float16), None)
    return out


def dequantize(q):
    flat = [(name, mx.array(v.astype(np.float32) * s.astype(np.float32) if kind == "int8" else v.astype(np.float32))) for name, (kind, v, s) in q.items()]
    return tree_unflatten(flat)


def main():
    args = Hyperparameters()
    mx.random.seed(args.seed)
    rng = np.random.default_rng(args.seed)
    train = load_tokens(os.path.join(args.data_path, "fineweb_train_*.bin"))
    val = load_tokens(os.path.join(args.data_path, "fineweb_val_*.bin"))
    model = TinyLM(args)
    opt = optim.Adam(learning_rate=args.lr)
    step_fn = nn.value_and_grad(model, loss_fn)
    start = time.time()
    step = 0
    while step < args.iterations:
        elapsed = time.time() - start
        if elapsed > args.max_wallclock_seconds:
            print(f"stopping_early: wallclock_cap train_time:{elapsed * 1000:.0f}ms step:{step}/{args.iterations}")
            break
        idx = rng.integers(0, len(train) - args.train_seq_len - 1, size=args.batch_size)
        x = mx.array(np.stack([train[i : i + args.train_seq_len] for i in idx]))
        y = mx.array(np.stack([train[i + 1 : i + 1 + args.train_seq_len] for i in idx]))
        loss, grads = step_fn(model, x, y)
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        step += 1
        if step % 20 == 0:
            print(f"step:{step}/{args.iterations} train_loss:{loss.item():.4f}")
    val_loss, val_bpb = evaluate(model, val, args)
    print(f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}")
    blob = zlib.compress(pickle.dumps(quantize(model.parameters())), 9)
    with open("final_model.int8.ptz", "wb") as f:
        f.write(blob)
    print(f"serialized_model_int8_zlib:{len(blob)} bytes")
    with open("final_model.int8.ptz", "rb") as f:
        model.update(dequantize(pickle.loads(zlib.decompress(f.read()))))
    q_loss, q_bpb = evaluate(model, val, args)
    print(f"final_int8_zlib_roundtrip val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f}")
    print(f"final_int8_zlib_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}")


if __name__ == "__main__":
    main()
