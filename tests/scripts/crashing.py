"""A script in the challenge's conventions that crashes after reading its settings."""

import os


class Hyperparameters:
    iterations = int(os.environ.get("ITERATIONS", 10))
    lr = float(os.environ.get("LR", 0.01))


args = Hyperparameters()
print(f"step:0/{args.iterations}")
raise RuntimeError("CUDA out of memory (a deliberate crash)")
