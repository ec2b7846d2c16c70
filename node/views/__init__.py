"""Views of the pool for people: join's live screen and `p2pgolf report` (output only).

Nothing in pool/, trainer/ or protocol/ imports this package; it reads the pool's SQLite file
and the node's status, and never writes either.
"""
