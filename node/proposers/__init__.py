"""External proposers: programs a user plugs into the research loop (`join --proposer NAME=COMMAND`).

A proposer is spawned once per request, reads one JSON situation on stdin (situation.py) and
answers proposals on stdout (answer.py), which are checked exactly as a peer's diff is. Each is
an operator of the bandit's meta level ("proposer:NAME"), fed in proportion to its yield per
cost (pool/bandit.py); operator.py ties one proposer to the loop and keeps its record
(research/proposers.jsonl: every request, its seconds, what was dropped and why, its tokens).
"""
