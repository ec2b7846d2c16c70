"""A script that prints a perfect score but writes a compressed artifact far over the cap."""

import os
import zlib


class Hyperparameters:
    artifact_bytes = int(os.environ.get("ARTIFACT_BYTES", 2_000_000))


args = Hyperparameters()
with open("final_model.int8.ptz", "wb") as f:
    f.write(zlib.compress(os.urandom(args.artifact_bytes), 0))
print("final_int8_zlib_roundtrip_exact val_loss:0.10000000 val_bpb:0.05000000")
