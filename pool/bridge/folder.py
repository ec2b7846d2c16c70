"""Find the files of a Parameter Golf record folder (`records/<track>/<date>_<name>/`).

- submission: `submission.json`, else the one `submission*.json`;
- README: `README.md` (any case);
- logs: `*.log` in the folder or one level below, and `*.txt` named `train*` or under `logs/`;
- script: `train_gpt.py`, else the only `*.py` (or the only one whose name starts with `train`);
  a short stub that runs another file of the folder (`exec(open("x.py").read())`, `runpy`,
  `import x`) resolves to that file, since that is where the hyperparameters live.
A folder without a script, with an empty (0-byte) script, or with several candidates and no
way to choose raises FolderError naming the file. Nothing is executed.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

from p2pgolf.pool.bridge.errors import FolderError

MAX_FILE_BYTES = 64 * 1024 * 1024  # no record folder file is this large; refuse rather than read it
_STUB_MAX_BYTES = 1024  # a stub is a few lines; anything longer is the script itself
_TRACK_DIR = re.compile(r"^track_(.+)$")


@dataclass(frozen=True)
class RecordFolder:
    """The files of one record folder (paths; None where the folder has none)."""

    path: Path
    name: str  # the folder's own name, e.g. 2026-03-17_NaiveBaseline
    track: str  # from the parent directory (track_10min_16mb -> 10min_16mb), "" if not in one
    submission: Path | None
    readme: Path | None
    script: Path  # the file whose hyperparameters were run
    entry: Path  # the file the run command starts (the stub, when there is one)
    logs: tuple[Path, ...]


def find_files(path: str | Path) -> RecordFolder:
    """The files of the record folder at `path` (see module doc)."""
    root = Path(path)
    if not root.is_dir():
        raise FolderError(str(root), "", "not a directory")
    top = sorted(p for p in root.iterdir() if p.is_file())
    subs = sorted(p for p in root.iterdir() if p.is_dir())
    submissions = [p for p in top if p.name.lower().startswith("submission") and p.suffix.lower() == ".json"]
    submission = next((p for p in submissions if p.name.lower() == "submission.json"), submissions[0] if submissions else None)
    readme = next((p for p in top if p.name.lower() == "readme.md"), None)
    logs = [p for p in top if _is_log(p, in_logs_dir=False)]
    for sub in subs:
        logs += [p for p in sorted(sub.iterdir()) if p.is_file() and _is_log(p, in_logs_dir=sub.name.lower() == "logs")]
    entry = _entry_script(root, top)
    script = _stub_target(root, entry) or entry
    for p in {entry, script}:
        size = p.stat().st_size
        if size == 0:
            raise FolderError(_rel(root, p), "", "empty script (0 bytes)")
        if size > MAX_FILE_BYTES:
            raise FolderError(_rel(root, p), "", f"{size:,} bytes; a script is at most {MAX_FILE_BYTES:,}")
    m = _TRACK_DIR.match(root.resolve().parent.name)
    return RecordFolder(root, root.name, m.group(1) if m else "", submission, readme, script, entry, tuple(logs))


def read_text(root: Path, path: Path) -> str:
    """A file of the folder as text (undecodable bytes replaced); FolderError if unreadable or huge."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise FolderError(_rel(root, path), "", f"{size:,} bytes; larger than any record file ({MAX_FILE_BYTES:,})")
        return path.read_bytes().decode("utf-8", errors="replace")
    except OSError as exc:
        raise FolderError(_rel(root, path), "", f"cannot read ({exc.strerror or exc})") from None


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _is_log(path: Path, *, in_logs_dir: bool) -> bool:
    name = path.name.lower()
    if path.suffix.lower() == ".log":
        return True
    return path.suffix.lower() == ".txt" and (in_logs_dir or name.startswith("train"))


def _entry_script(root: Path, top: list[Path]) -> Path:
    scripts = [p for p in top if p.suffix == ".py"]
    if not scripts:
        raise FolderError(root.name, "script", "no training script (*.py) in the folder")
    for p in scripts:
        if p.name == "train_gpt.py":
            return p
    if len(scripts) == 1:
        return scripts[0]
    trains = [p for p in scripts if p.name.lower().startswith("train")]
    if len(trains) == 1:
        return trains[0]
    raise FolderError(root.name, "script", f"{len(scripts)} Python files and none is train_gpt.py: {', '.join(p.name for p in scripts[:4])}")


def _stub_target(root: Path, entry: Path) -> Path | None:
    """The folder file a short stub runs, if `entry` is one."""
    size = entry.stat().st_size
    if size == 0 or size > _STUB_MAX_BYTES:
        return None
    try:
        tree = ast.parse(entry.read_bytes())
    except (SyntaxError, ValueError):
        return None
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.endswith(".py"):
            names.append(node.value)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            names.extend(m.replace(".", "/") + ".py" for m in mods if m)
    for name in names:
        target = (root / name).resolve()
        if target.parent == root.resolve() and target.is_file() and target != entry.resolve():
            return root / target.name
    return None
