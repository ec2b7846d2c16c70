"""A script that trains nothing, writes an artifact and never prints the final score line."""

import os


class Hyperparameters:
    lr = float(os.environ.get("LR", 0.01))


with open("final_model.int8.ptz", "wb") as f:
    f.write(b"x" * 100)
print("val_bpb:1.0 (not the round-trip line)")
