"""A tiny training script in the challenge's conventions, for p2pgolf's tests (not a model anyone should use).

Hyperparameters come from the environment, the data are challenge-format shards under DATA_PATH
(byte-level tokens: TOKENIZER_PATH empty, one byte per token), training stops at ITERATIONS or
MAX_WALLCLOCK_SECONDS, the model is int8-quantized, zlib-compressed and written as
final_model.int8.ptz, reloaded, and scored; the last line is the challenge's round-trip line.
"""

import glob
import io
import math
import os
import time
import zlib

import numpy as np
import torch
import torch.nn.functional as F


class Hyperparameters:
    data_path = os.environ.get("DATA_PATH", "./data")
    tokenizer_path = os.environ.get("TOKENIZER_PATH", "")
    seed = int(os.environ.get("SEED", 1337))
    max_wallclock_seconds = float(os.environ.get("MAX_WALLCLOCK_SECONDS", 600.0))
    iterations = int(os.environ.get("ITERATIONS", 150))
    vocab_size = int(os.environ.get("VOCAB_SIZE", 256))
    model_dim = int(os.environ.get("MODEL_DIM", 32))
    mlp_mult = int(os.environ.get("MLP_MULT", 2))
    train_seq_len = int(os.environ.get("TRAIN_SEQ_LEN", 64))
    batch_size = int(os.environ.get("BATCH_SIZE", 16))
    lr = float(os.environ.get("LR", 0.003))
    warmdown_frac = float(os.environ.get("WARMDOWN_FRAC", 0.3))
    tie_embeddings = bool(int(os.environ.get("TIE_EMBEDDINGS", "1")))
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
    return torch.from_numpy(np.concatenate(out).astype(np.int64))


class TinyLM(torch.nn.Module):
    """Two previous tokens -> next token: embeddings, one MLP, a (tied) head."""

    def __init__(self, args):
        super().__init__()
        self.embed = torch.nn.Embedding(args.vocab_size, args.model_dim)
        self.prev = torch.nn.Embedding(args.vocab_size, args.model_dim)
        self.fc = torch.nn.Linear(args.model_dim, args.model_dim * args.mlp_mult)
        self.proj = torch.nn.Linear(args.model_dim * args.mlp_mult, args.model_dim)
        self.head = None if args.tie_embeddings else torch.nn.Linear(args.model_dim, args.vocab_size, bias=False)

    def forward(self, x):
        prev = torch.cat([x[:, :1], x[:, :-1]], dim=1)
        h = self.embed(x) + self.prev(prev)
        h = h + self.proj(F.relu(self.fc(h)).square())
        return F.linear(h, self.embed.weight) if self.head is None else self.head(h)


def quantize(state):
    out = {}
    for name, t in state.items():
        t = t.detach().float()
        if t.ndim == 2:
            scale = t.abs().amax(dim=1, keepdim=True).clamp_min(1e-8) / 127.0
            out[name] = ("int8", torch.round(t / scale).to(torch.int8), scale.half())
        else:
            out[name] = ("fp16", t.half(), None)
    return out


def dequantize(q):
    return {name: (v.float() * s.float() if kind == "int8" else v.float()) for name, (kind, v, s) in q.items()}


def evaluate(model, val, args):
    model.eval()
    n = (min(len(val), args.val_tokens + 1) - 1) // args.train_seq_len * args.train_seq_len
    x = val[:n].view(-1, args.train_seq_len)
    y = val[1 : n + 1].view(-1, args.train_seq_len)
    with torch.no_grad():
        loss = F.cross_entropy(model(x).reshape(-1, args.vocab_size), y.reshape(-1), reduction="sum").item() / y.numel()
    model.train()
    return loss, loss / math.log(2.0)  # one byte per token: bits per token = bits per byte


def main():
    args = Hyperparameters()
    torch.manual_seed(args.seed)
    torch.set_num_threads(1)
    train = load_tokens(os.path.join(args.data_path, "fineweb_train_*.bin"))
    val = load_tokens(os.path.join(args.data_path, "fineweb_val_*.bin"))
    model = TinyLM(args)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    gen = torch.Generator().manual_seed(args.seed)
    start = time.time()
    step = 0
    while step < args.iterations:
        elapsed = time.time() - start
        if elapsed > args.max_wallclock_seconds:
            print(f"stopping_early: wallclock_cap train_time:{elapsed * 1000:.0f}ms step:{step}/{args.iterations}")
            break
        frac = step / args.iterations
        scale = min(1.0, (1.0 - frac) / args.warmdown_frac) if args.warmdown_frac > 0 else 1.0
        for group in opt.param_groups:
            group["lr"] = args.lr * scale
        idx = torch.randint(0, len(train) - args.train_seq_len - 1, (args.batch_size,), generator=gen)
        x = torch.stack([train[i : i + args.train_seq_len] for i in idx])
        y = torch.stack([train[i + 1 : i + 1 + args.train_seq_len] for i in idx])
        loss = F.cross_entropy(model(x).reshape(-1, args.vocab_size), y.reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if step % 50 == 0:
            print(f"step:{step}/{args.iterations} train_loss:{loss.item():.4f}")
    val_loss, val_bpb = evaluate(model, val, args)
    print(f"step:{step}/{args.iterations} val_loss:{val_loss:.4f} val_bpb:{val_bpb:.4f}")
    buf = io.BytesIO()
    torch.save(quantize(model.state_dict()), buf)
    blob = zlib.compress(buf.getvalue(), 9)
    with open("final_model.int8.ptz", "wb") as f:
        f.write(blob)
    print(f"Serialized model int8+zlib: {len(blob)} bytes")
    with open("final_model.int8.ptz", "rb") as f:
        state = dequantize(torch.load(io.BytesIO(zlib.decompress(f.read())), weights_only=False))
    model.load_state_dict(state)
    q_loss, q_bpb = evaluate(model, val, args)
    print(f"final_int8_zlib_roundtrip val_loss:{q_loss:.4f} val_bpb:{q_bpb:.4f}")
    print(f"final_int8_zlib_roundtrip_exact val_loss:{q_loss:.8f} val_bpb:{q_bpb:.8f}")


if __name__ == "__main__":
    main()
