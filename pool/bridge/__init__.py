"""The competition bridge, pool side: read Parameter Golf record folders into result records.

Judgement-free parsing, one idea per file: `folder` finds the files of a record folder,
`submission_json` and `train_log` read what they state, `run_command` the environment of the
README's command, `hparams` merges the hyperparameters actually run, `hardware_text` turns
device lines and free strings into a hardware class, `provenance` writes and reads the note
that marks a record as imported, `builtin_equivalent` says whether a folder's configuration is a
built-in knob diff, and `importer` puts them together into records signed by the importer.
"""
