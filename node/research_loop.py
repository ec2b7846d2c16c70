"""The research loop: pick -> train (child process, within the budget) -> sign -> store ->
publish -> repeat, as the node's worker.

Guarantees:
- Every experiment is written to a journal (JSON lines in the node's data directory) before it
  starts and when it ends, with fsync; after a restart, an experiment whose run finished is
  published from its run directory, never trained again, and one that was cut off counts as
  spent (one experiment lost, nothing else).
- A crash, an out-of-memory or an over-size run costs one experiment, never the node: the
  trainer runs in a child process and every failure becomes a journal entry.
- Cancelling the loop (Ctrl-C, SIGTERM, a test's cancel scope) abandons the run in progress: the
  trainer's process group is stopped before the cancellation completes (within a few seconds),
  and the journal records the experiment as "abandoned"; it is not trained again after a
  restart and does not count against the operator that chose it.
- `LoopControl.finish()` lets the run in progress complete, be signed, stored and published,
  and then `run` returns without starting another experiment.
- Before an experiment, the untrusted claims its choice rests on (a parent or subject of the
  proposal, or a claim in or entering the top of this node's ranking) are re-evaluated from
  their artifacts (the verify operator, `verify_first`), while pool.verify_policy judges that a
  check pays; the choice is then made again with the attestations in the pool. Each check is
  journalled (verify.jsonl: its cost in seconds and whether it confirmed or refuted the claim).
- Choices come from the pool through the real estimator and bandit (pool/estimator.py,
  pool/bandit.py), computed in a worker thread so that the trio loop (gossip, sync, the control
  socket) keeps serving while a large pool is estimated; the pool's evidence is read
  incrementally (pool/evidence_cache.py). A replicate or a try of a peer's candidate is
  published as an attestation of the record it re-measured, anything else as a result citing
  its parents.
- A candidate whose run failed here (crashed, out of memory, over the size cap, timed out, its
  plan refused) is remembered for this hardware class in the pool file (pool/failures.py) and
  not chosen again, until a trusted key's result for it arrives or the user runs
  `p2pgolf pool retry`.
- External proposers (node/proposers, `join --proposer`) are operators of the bandit's meta
  level: one is spawned only when chosen, its proposals are checked as a peer's diff, its
  rationale goes into the record's note, and every request is journalled (proposers.jsonl).
- Script candidates run only if this node's user approved that exact script
  (node/scripts.py), checked when the bandit chooses and again, with the bytes re-hashed, just
  before the run; records of other scripts are evidence only. An approved script without any
  result in the pool is tried first at its defaults (trainer/script_runner.py runs it).
- With an announcer (node/running_announcements.py, the node's), each run is announced to peers
  as it starts (its window: the run's hard deadline) and withdrawn when it ends, and each choice
  is made knowing what trusted peers of this hardware class are training now (the bandit's
  `running=`): a new candidate a peer trains is not proposed again. An announcement that cannot
  be sent costs nothing but the coordination.
- Every finished experiment's journal end keeps what the bandit's choice promised over the
  incumbent and what the run delivered (`predicted`, `realised`, bpb), and the meta level's
  history carries both, so an operator whose runs fall short of its promises loses share
  (the bandit's `calibrate`), across restarts too.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import os
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

log = logging.getLogger(__name__)

JOURNAL_NAME = "journal.jsonl"
VERIFY_JOURNAL_NAME = "verify.jsonl"  # the verify operator's checks: its cost and its yield
MAX_VERIFY_PER_DECISION = 4
MAX_VERIFY_TRIES = 3  # a claim whose artifact cannot be had is given up after this many checks
ABANDONED = "abandoned"  # the journal status of a run stopped by cancellation (same as the trainer's)
# How long a cancelled loop waits for the trainer thread to stop its child: the runner's poll
# interval, its SIGTERM grace and its SIGKILL wait, with room to spare. Bounded, so a wedged
# child cannot hold the node's shutdown for ever.
ABANDON_WAIT_S = 20.0
WITHDRAW_WAIT_S = 2.0  # how long the end of a run waits to tell peers (cancelled too: shielded)


@dataclass(frozen=True)
class LoopSettings:
    """What the loop trains and where it keeps its files."""

    bench_name: str
    journal_dir: Path
    runs_dir: Path
    data_dir: Path | None = None
    default_base: str = "naive-baseline"
    hw_key: str | None = None  # None: detect this machine's
    max_experiments: int | None = None  # None: run until cancelled
    backend: str = "auto"
    device: str = "auto"
    eval_token_cap: int = 0
    timeout_slack_s: float = 300.0  # hard deadline = budget + this (the trainer's evaluation included)


@dataclass(frozen=True)
class CurrentRun:
    """The experiment being trained right now (from its journal start until its journal end)."""

    n: int
    operator: str
    candidate: str
    budget_s: float
    deadline_s: float  # the trainer's hard deadline, from `started_at`
    started_at: float  # time.monotonic()
    base: str = ""
    diff: tuple[tuple[str, Any], ...] = ()
    why: str = ""  # the operator's reason, for a person (node/views/reason.py)

    def describe(self) -> str:
        """One line for a person: operator, candidate, base and diff, budget."""
        diff = " ".join(f"{k}={v}" for k, v in self.diff) or "(no diff)"
        return f"{self.operator} candidate {self.candidate[:12]} = {self.base} {diff}; training {_seconds(self.budget_s)}, then evaluation"


RECENT_RESULTS = 20  # finished experiments kept for `status`


class LoopControl:
    """The outside's handle on a running loop (join's Ctrl-C handling): what it is training, and
    "finish the current run, then stop". Use it from the trio thread that runs the loop."""

    def __init__(self) -> None:
        self.current: CurrentRun | None = None
        self.progress: Any = None  # the current run's latest trainer.progress.Progress, if any
        self.progress_at = 0.0  # when it came (time.monotonic())
        self.last_end: dict[str, Any] | None = None  # the journal end entry of the latest experiment
        self.results: list[dict[str, Any]] = []  # the latest finished experiments, newest last (see `snapshot`)
        self.finishing = False
        self.finish_requested = trio.Event()
        self.stopped = trio.Event()  # set when the loop's `run` has returned or was cancelled

    def finish(self) -> CurrentRun | None:
        """Start no new experiment; `run` returns once the current one (if any) is published.
        Returns the run that will be finished, or None if none is in progress."""
        self.finishing = True
        self.finish_requested.set()
        return self.current

    def saw(self, event: Any, now: float | None = None) -> None:
        """Note the current run's latest progress event (called from the runner's thread)."""
        self.progress_at = time.monotonic() if now is None else now
        self.progress = event

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """Plain JSON for `status`: the experiment in progress (None if none) with its progress,
        and the latest finished ones (each with status, val_bpb, steps, seconds, record)."""
        now = time.monotonic() if now is None else now
        run = self.current
        current = None
        if run is not None:
            event = self.progress
            current = {
                "n": run.n,
                "operator": run.operator,
                "candidate": run.candidate,
                "base": run.base,
                "diff": dict(run.diff),
                "why": run.why,
                "tokens_per_s": float(getattr(event, "tokens_per_s", 0.0)),
                "phase": getattr(event, "phase", "starting"),
                "step": int(getattr(event, "step", 0)),
                "train_loss": float(getattr(event, "train_loss", 0.0)),
                "elapsed_s": round(now - run.started_at, 1),
                "training_s": round(float(getattr(event, "elapsed_s", 0.0)), 1),
                "budget_s": run.budget_s,
                "deadline_s": run.deadline_s,
                "remaining": self.remaining(now),
            }
        return {"current": current, "finished": list(self.results)}

    def describe_end(self, end: dict[str, Any]) -> str:
        """How experiment `end["n"]` ended, for a person: its score or why it failed."""
        found = next((r for r in reversed(self.results) if r["n"] == end["n"]), None)
        if end["status"] == "ok" and found is not None and found.get("val_bpb") is not None:
            record = f", record {end['record'][:12]}" if end.get("record") else ""
            took = f" in {_seconds(found['seconds'])}" if found.get("seconds") is not None else ""
            degraded = f"; {end['note']}" if end.get("note") else ""  # "DEGRADED: <reason>"
            return f"finished: val_bpb {found['val_bpb']:.4f} after {found['steps']} steps{took}{record}{degraded}"
        note = f" ({end['note']})" if end.get("note") else ""
        return f"ended: {end['status']}{note}"

    def remaining(self, now: float | None = None) -> str:
        """Roughly what is left of the current run, for a person: where it is, and the hard
        deadline that bounds it (e.g. "training, about 2s of its 3s budget left, then
        evaluation; at most 5m02s")."""
        run = self.current
        if run is None:
            return "no run in progress"
        now = time.monotonic() if now is None else now
        event = self.progress
        phase = getattr(event, "phase", "starting")
        # Training reports come per logged step; count on from the last one.
        left = event.time_left_s - (now - self.progress_at) if phase == "training" else 0.0
        if phase == "training" and event.budget_s > 0 and left >= 1:
            where = f"training, about {_seconds(left)} of its {_seconds(run.budget_s)} budget left, then evaluation"
        elif phase == "training" and event.budget_s > 0:
            where = f"training, its {_seconds(run.budget_s)} budget spent, then evaluation"
        elif phase == "exporting":
            where = "training done, exporting, then evaluation"
        elif phase == "evaluating" and getattr(event, "total", 0) > 0:
            where = f"evaluating, {event.done} of {event.total} windows done"
        elif phase == "evaluating":
            where = "evaluating"
        elif phase == "done":
            where = "trained and scored, publishing"
        else:
            where = f"starting, then {_seconds(run.budget_s)} of training and an evaluation"
        bound = max(run.deadline_s - (now - run.started_at), 0.0)
        return f"{where}; at most {_seconds(bound)}"


async def run_research_loop(
    node: Any, *, control: LoopControl | None = None, eval_token_cap: int = 0, max_experiments: int | None = None, proposers: tuple[Any, ...] = (),
) -> None:
    """The node's worker: research on the node's first benchmark until cancelled, until
    `control.finish()` and the current run is published, or until `max_experiments` have been
    run in this data directory. `eval_token_cap` > 0 scores each run on at most that many
    validation tokens (marked partial), for quick tries. `proposers`: node.proposers.spec
    ProposerSpec values, each an external operator of the bandit's meta level."""
    home = node.options.home
    bench = node.options.benches[0]
    root = Path(home.root) if home is not None else Path.cwd() / ".p2pgolf"
    settings = LoopSettings(
        bench_name=bench.name,
        journal_dir=root / "research",
        runs_dir=home.runs_dir if home is not None else root / "runs",
        data_dir=home.data_dir if home is not None else None,
        default_base=_default_base(bench, home.runs_dir if home is not None else root / "runs"),
        eval_token_cap=eval_token_cap,
        max_experiments=max_experiments,
    )
    verifier = None
    if node.blobs is not None:
        from p2pgolf.node.verification import LoopVerifier

        verifier = LoopVerifier(node, bench, data_dir=settings.data_dir, backend=settings.backend, device=settings.device)
    scripts = None
    if home is not None:
        from p2pgolf.node.scripts import ScriptStore

        scripts = ScriptStore(home)
    hide = (str(home.root),) if home is not None else ()
    loop = ResearchLoop(
        node.identity, node.store, node.trust, node.publish, settings, control=control, keep_artifact=node.keep_artifact, verifier=verifier,
        scripts=scripts, hide=hide, proposers=_proposer_operators(proposers, settings.journal_dir), announcer=node.announcer,
    )  # fmt: skip
    await loop.run()


def _proposer_operators(specs: tuple[Any, ...], journal_dir: Path) -> tuple[Any, ...]:
    if not specs:
        return ()
    from p2pgolf.node.proposers.operator import ProposerOperator

    return tuple(ProposerOperator(spec, journal_dir) for spec in specs)


class ResearchLoop:
    """One node's loop. `publish(raw)` stores and gossips a signed record (Node.publish).
    `runner` is trainer.api.run_experiment or anything with its signature (cancel included)."""

    def __init__(
        self,
        identity: Any,
        store: Any,
        trust: Any,
        publish: Callable[[bytes], Awaitable[Any]],
        settings: LoopSettings,
        *,
        runner: Callable[..., Any] | None = None,
        control: LoopControl | None = None,
        keep_artifact: Callable[[Path, str], Any] | None = None,
        verifier: Any = None,
        scripts: Any = None,
        script_runner: Callable[..., Any] | None = None,
        hide: tuple[str, ...] = (),
        proposers: tuple[Any, ...] = (),
        announcer: Any = None,
    ) -> None:
        from p2pgolf.protocol.benchmarks import benchmark

        self.identity = identity
        self.store = store
        self.trust = trust
        self.publish = publish
        self.settings = settings
        self.bench = benchmark(settings.bench_name)
        self.journal = Journal(settings.journal_dir / JOURNAL_NAME)
        self.verify_journal = VerifyJournal(settings.journal_dir / VERIFY_JOURNAL_NAME)
        if runner is None:
            from p2pgolf.trainer.api import run_experiment

            runner = run_experiment
        self.runner = runner
        self.scripts = scripts  # node.scripts.ScriptStore, or None: built-in candidates only
        self.script_runner = script_runner
        self.hide = hide  # what a script must not see (the node's home)
        self.control = control if control is not None else LoopControl()
        self.keep_artifact = keep_artifact  # (artifact path, sha): the node keeps and serves it
        self.verifier = verifier  # node.verify_loop.Verifier or None: no verify operator
        self.proposers = tuple(proposers)  # node.proposers.operator.ProposerOperator: external operators
        self.announcer = announcer  # node.running_announcements.RunningAnnouncer, or None: no coordination
        self._hw = settings.hw_key
        from p2pgolf.pool.evidence_cache import EvidenceCache
        from p2pgolf.pool.failures import FailureMemory

        self.failures = FailureMemory(store)  # what failed on this hardware class
        self._evidence = EvidenceCache(store, self.bench.id)  # the pool's evidence, read incrementally

    @property
    def hw(self) -> str:
        if self._hw is None:
            from p2pgolf.trainer.hardware import detect_hardware

            self._hw = detect_hardware().key
        return self._hw

    async def run(self) -> None:
        """Recover the journal, then run experiments until cancelled, max_experiments, or
        `control.finish()` (returns once the run in progress is published)."""
        control = self.control
        try:
            await self.recover()
            failures = 0
            while not control.finishing and (self.settings.max_experiments is None or self.journal.count() < self.settings.max_experiments):
                end = await self.step()
                failures = 0 if end["status"] == "ok" else failures + 1
                if failures:
                    # a run that fails at once (no data, a broken backend) must not spin the node
                    with trio.move_on_after(min(300.0, 2.0**failures)):
                        await control.finish_requested.wait()
        finally:
            control.stopped.set()

    async def recover(self) -> None:
        """Finish what a previous process left: publish finished runs, write off the rest."""
        for entry in self.journal.unfinished():
            run_dir = Path(entry["run_dir"])
            result = run_dir / "result.json"
            data = _read_json(result)
            if data is not None and data.get("status") == "ok":
                await self._publish_run(entry, data)
            else:
                status = data.get("status", "lost") if data else "lost"
                self._end(entry["n"], status=status, record=None, gain=0.0, won=False, note="cut off by a restart")

    async def step(self) -> dict[str, Any]:
        """Choose, train, publish one experiment; returns its journal end entry."""
        import numpy as np

        from p2pgolf.pool import bandit
        from p2pgolf.pool.estimator import estimate
        from p2pgolf.pool.trust_weights import TrustPolicy

        policy = TrustPolicy(unknown_weight=self.trust.unknown_weight)
        n = self.journal.count()
        seed = int.from_bytes(hashlib.sha256(f"{self.identity.public_hex}/{n}".encode()).digest()[:4], "big")
        # With a known number of experiments the bandit explores first and confirms its leader
        # towards the end (a record needs several seeds); without one it splits evenly.
        remaining = None if self.settings.max_experiments is None else self.settings.max_experiments - n
        from p2pgolf.protocol.candidates import candidate_id, script_sha

        runnable, vocabularies = self._script_view()
        tokenizer_of = {base: self.scripts.tokenizer(script_sha(base)) or self.bench.tokenizer for base in vocabularies}
        asked: dict[str, Any] = {}  # proposer operator -> its answer for this experiment (asked once)

        def decide_now(running: list[str]) -> tuple[Any, Any]:
            from p2pgolf.pool.gc_pause import gc_paused

            with gc_paused():  # the bandit's choice makes as many short-lived objects as the estimate
                evidence = self._evidence.evidence()
                post = estimate(evidence, self.trust.status, self.hw, budget_s=self.bench.budget_s, policy=policy)
                rng = np.random.default_rng(seed)
                external = {op.operator: functools.partial(self._ask, op, post, n, runnable, vocabularies, asked) for op in self.proposers}
                return post, bandit.choose(
                    post, rng, history=self._history(), default_base=self.settings.default_base, remaining=remaining,
                    default_tokenizer=self.bench.tokenizer, runnable=runnable, vocabularies=vocabularies, script_tokenizers=tokenizer_of,
                    external=external, avoid=self._failed_here(), running=running,
                )  # fmt: skip

        def decide() -> Any:
            # Off the trio thread: estimating a large pool takes a while (the interpreter hands the
            # GIL back every few ms, numpy and SuperLU release it), and a proposer runs for up to
            # its timeout. Abandoned on cancellation (the proposer is killed at its timeout, or
            # by join's reaper).
            return trio.to_thread.run_sync(decide_now, self.peers_running(), abandon_on_cancel=True)

        post, choice = await decide()
        tried = self.journal.candidates()
        untried = [
            base for base in sorted(vocabularies)
            if not any(info.base == base and info.tokenizer == tokenizer_of[base] for info in post.info.values())
            and candidate_id(base, {}, tokenizer_of[base]) not in tried
        ]  # fmt: skip
        if untried:
            # a newly approved script is first measured at its own defaults, on its chosen data
            from p2pgolf.pool.proposals import Proposal

            p = Proposal(untried[0], {}, (), "try_peer", tokenizer=tokenizer_of[untried[0]])
        else:
            # The verify operator: untrusted claims this decision rests on are re-evaluated first
            # (an evaluation, not a budget), and the decision is taken again on what they showed.
            if self.verifier is not None and await self.verify_first(post, choice.proposal, seed):
                post, choice = await decide()
            p = choice.proposal
        run_dir = self.settings.runs_dir / f"exp-{n:05d}-{p.candidate[:8]}"
        extra = {}
        if p.operator in asked:
            answer, seconds = asked[p.operator]
            # the proposer's one-line reason travels in the record's note; its seconds are its cost
            extra = {"rationale": answer.rationale.get(p.candidate, ""), "cost": 1.0 + seconds / max(self.bench.budget_s, 1.0)}
        timeout_s = self.bench.budget_s + self.settings.timeout_slack_s
        announced = await self._announce(p, timeout_s)  # before the journal: a cancel here loses nothing
        entry = self.journal.start(n, proposal=p, seed=seed, run_dir=str(run_dir), **extra)
        log.info("experiment %d: %s of %s (%s)", n, p.operator, p.candidate[:12], dict(p.diff))
        control = self.control
        control.progress = None
        control.current = CurrentRun(n, p.operator, p.candidate, self.bench.budget_s, timeout_s, time.monotonic(), p.base, tuple(dict(p.diff).items()), why=_reason(p))
        try:
            try:
                if p.is_script:
                    call = functools.partial(self._run_script, p, seed=seed, out_dir=run_dir, timeout_s=timeout_s)
                else:
                    call = functools.partial(
                        self.runner,
                        self.settings.bench_name,
                        p.base,
                        dict(p.diff),
                        budget_s=self.bench.budget_s,
                        seed=seed,
                        out_dir=run_dir,
                        data_dir=self.settings.data_dir,
                        backend=self.settings.backend,
                        device=self.settings.device,
                        eval_token_cap=self.settings.eval_token_cap,
                        timeout_s=timeout_s,
                        progress=self._on_progress,
                        tokenizer=p.tokenizer,  # a peer's candidate may use another variant
                    )
                outcome = await self._train(call, entry)
                data = outcome.result
            except Exception as exc:  # a config the trainer refuses, a run dir it cannot write
                log.warning("experiment %d could not run: %s", n, exc)
                self._remember_failure(p, "failed", str(exc))
                return self._end(n, status="failed", record=None, gain=0.0, won=False, note=str(exc)[:200])
            if data.get("status") != "ok":
                self._remember_failure(p, str(data.get("status")), str(data.get("error")))
                return self._end(n, status=str(data.get("status")), record=None, gain=0.0, won=False, note=str(data.get("error"))[:200])
            measured = float(data["metrics"]["val_bpb"])
            # what the choice promised over the incumbent against what the run delivered: the meta
            # level charges operators that over-promise (bandit `calibrate`); a newly approved
            # script's first run was not the bandit's choice and promised nothing
            promised = bandit.predicted_and_realised(choice, measured, post) if p is choice.proposal else (math.nan, math.nan)
            return await self._publish_run(entry, data, gain=bandit.gain(p, measured, post), won=bandit.outcome(p, measured, post), promised=promised)
        finally:
            control.current = None
            control.progress = None
            if announced is not None:
                with trio.CancelScope(shield=True), trio.move_on_after(WITHDRAW_WAIT_S):
                    await self._withdraw(announced)

    def peers_running(self) -> list[str]:
        """Candidate ids trusted peers of this hardware class are training now (at most
        node.running_announcements.MAX_BLOCKING); empty without an announcer. Read on the trio
        thread: the board changes there."""
        if self.announcer is None:
            return []
        try:
            return self.announcer.board.running_ids(self.bench.id, self.hw, exclude_author=self.identity.public_hex)
        except Exception:
            log.exception("cannot read what peers are running; choosing without it")
            return []

    async def _announce(self, p: Any, window_s: float) -> Any:
        """Tell peers we train `p` now, for at most `window_s`; None if there is no announcer or it failed."""
        if self.announcer is None:
            return None
        try:
            return await self.announcer.announce(self.bench.id, self.hw, p.base, dict(p.diff), p.tokenizer, window_s)
        except Exception as exc:  # coordination is an optimisation: the run goes on without it
            log.warning("cannot announce experiment %s to peers: %s", p.candidate[:12], exc)
            return None

    async def _withdraw(self, announced: Any) -> None:
        try:
            await self.announcer.withdraw(announced)
        except Exception as exc:  # it expires by itself at its deadline
            log.debug("cannot withdraw the running announcement: %s", exc)

    def _failed_here(self) -> set[str]:
        """Candidates that failed on this hardware class and are not to be chosen again."""
        from p2pgolf.pool.trust_weights import TRUSTED_STATUSES

        return self.failures.avoid(self.bench.id, self.hw, lambda author: self.trust.status(author) in TRUSTED_STATUSES)

    def _remember_failure(self, p: Any, status: str, reason: str) -> None:
        self.failures.record(self.bench.id, self.hw, p.candidate, status, reason)
        log.info("candidate %s failed here (%s) and is not chosen again; `p2pgolf pool retry %s` lifts that", p.candidate[:12], status, p.candidate[:12])

    def _history(self) -> list[Any]:
        """The meta level's history: experiments, and proposers' requests that gave nothing."""
        if not self.proposers:
            return self.journal.history()
        from p2pgolf.node.proposers.operator import merged_history

        return merged_history(self.journal.numbered_history(), list(self.proposers), self.bench.budget_s)

    def _ask(self, op: Any, post: Any, n: int, runnable: Any, vocabularies: dict[str, Any], asked: dict[str, Any]) -> list[Any]:
        """One request to a proposer (in a worker thread): its checked proposals, at most once per experiment."""
        if op.operator not in asked:
            from p2pgolf.node.proposers.situation import situation
            from p2pgolf.protocol.knobs import BASE_CONFIGS

            records = self.store.query(bench=self.bench.id, kind="result")
            try:
                doc = situation(
                    post, bench=self.bench, hw=self.hw, starts=self.journal.starts(), ends=self.journal.ends_by_n(), peer_records=records[::-1],
                    me=self.identity.public_hex, vocabularies=vocabularies, bases=[b for b in sorted(BASE_CONFIGS) if runnable(b)], usage=op.usage_today(),
                )  # fmt: skip
            except Exception:  # a bug describing the situation costs this request, not the experiment
                log.exception("proposer %s: the situation could not be written; not asked", op.spec.name)
                return []
            asked[op.operator] = op.request(
                doc, n, tokenizer=self.bench.tokenizer, runnable=runnable, vocabularies=vocabularies, known_record=lambda rid: self.store.get(rid) is not None,
            )  # fmt: skip
            log.info("proposer %s: %d proposal(s) kept, %d dropped", op.spec.name, len(asked[op.operator][0].proposals), len(asked[op.operator][0].dropped))
        return asked[op.operator][0].proposals

    def _script_view(self) -> tuple[Callable[[str], bool], dict[str, Any]]:
        """Which bases may run here, and the vocabularies of the approved scripts."""
        from p2pgolf.pool.bandit import builtin_only
        from p2pgolf.protocol.candidates import is_script_base, script_base, script_sha

        if self.scripts is None:
            return builtin_only, {}
        vocabularies = {}
        for sha in self.scripts.approved():
            try:
                vocabularies[script_base(sha)] = self.scripts.vocabulary(sha)
            except Exception as exc:  # damaged bytes: not runnable, say so once per step
                log.warning("approved script %s cannot be read: %s", sha[:12], exc)
        return (lambda base: not is_script_base(base) or (base in vocabularies and self.scripts.runnable(script_sha(base)))), vocabularies

    def _run_script(self, p: Any, *, seed: int, out_dir: Path, timeout_s: float, cancel: threading.Event) -> Any:
        """Run an approved script candidate (in the trainer's thread). Approval and the bytes'
        hash are checked here once more: nothing but approval makes a script run."""
        from p2pgolf.protocol.candidates import script_sha
        from p2pgolf.trainer.script_data import script_data_paths
        from p2pgolf.trainer.script_runner import ScriptRun, launch_script

        sha = script_sha(p.base)
        if self.scripts is None or not self.scripts.runnable(sha):
            raise RuntimeError(f"script {sha[:12]} is not approved on this node; it does not run")
        script = self.scripts.read_bytes(sha)
        cache = self.settings.journal_dir.parent / "script-data"
        data_path, tokenizer_path = script_data_paths(self.bench, p.tokenizer, self.settings.data_dir, cache)
        run = ScriptRun(
            script=script, bench=self.bench, tokenizer=p.tokenizer, diff=dict(p.diff), seed=seed, budget_s=self.bench.budget_s,
            data_path=data_path, tokenizer_path=tokenizer_path, device=self.settings.device, backend=self.settings.backend, hide=self.hide,
        )  # fmt: skip
        runner = self.script_runner or launch_script
        return runner(run, out_dir, timeout_s=timeout_s, cancel=cancel)

    async def verify_first(self, post: Any, proposal: Any, seed: int) -> int:
        """Re-evaluate the untrusted claims that would change this decision (pool.verify_policy),
        while the meta level says a check pays; journal each. Returns how many were checked."""
        import random

        from p2pgolf.node.verification import not_reevaluable
        from p2pgolf.pool.verify_policy import Claim, claims_to_verify, should_verify

        claims = {}
        for signed in self.store.query(bench=self.bench.id, kind="result"):
            r = signed.record
            claims[signed.id] = Claim(signed.id, r.candidate, signed.author, float(r.metrics.val_bpb), not_reevaluable(signed) is None)
        status = lambda key: str(getattr(self.trust.status(key), "value", self.trust.status(key)))  # noqa: E731
        targets = claims_to_verify(post, proposal, claims, status, checked=self.verify_journal.subjects())
        rng = random.Random(seed)
        checked = 0
        for rid in targets[:MAX_VERIFY_PER_DECISION]:
            signed = self.store.get(rid)
            decision = should_verify(self.verify_journal.history(), self.bench.budget_s, author=signed.author, rng=rng)
            if not decision.verify:
                log.info("verify: not checking %s: %s", rid[:12], decision.why)
                continue
            started = time.monotonic()
            try:
                outcome = await self.verifier.verify(signed)
            except Exception as exc:  # an unavailable or broken artifact costs this check, not the loop
                log.warning("verify: %s could not be checked: %s", rid[:12], exc)
                self.verify_journal.add(subject=rid, author=signed.author, agrees=None, seconds=time.monotonic() - started, note=str(exc)[:200])
                continue
            log.info("verify: %s %s (claimed %.4f, measured %.4f) in %.1f s", rid[:12], outcome.verdict, outcome.claimed, outcome.measured, outcome.reeval_s)
            self.verify_journal.add(
                subject=rid, author=signed.author, agrees=outcome.agrees, seconds=time.monotonic() - started,
                claimed=outcome.claimed, measured=outcome.measured, attestation=outcome.attestation.id,
            )  # fmt: skip
            checked += 1
        return checked

    async def _train(self, call: Callable[..., Any], entry: dict[str, Any]) -> Any:
        """`call(cancel=event)` in a worker thread. If this task is cancelled, the event is set
        (the runner stops its child), the thread is awaited (shielded, at most ABANDON_WAIT_S),
        the journal records the run as abandoned, and the cancellation goes on."""
        cancel = threading.Event()
        started = threading.Event()
        finished = threading.Event()
        box: dict[str, Any] = {}

        def work() -> None:
            started.set()  # before looking at `cancel`: see the handler below
            try:
                if not cancel.is_set():
                    box["outcome"] = call(cancel=cancel)
            except BaseException as exc:  # handed to the trio side below
                box["error"] = exc
            finally:
                finished.set()

        try:
            # Abandonable so that cancellation is seen at once; the child is then stopped
            # through `cancel` and the thread awaited below, so nothing outlives the loop.
            await trio.to_thread.run_sync(work, abandon_on_cancel=True)
        except trio.Cancelled:
            cancel.set()
            stopped = True
            # A cancel that was already pending raises before the thread starts; a thread that
            # starts after this point sees `cancel` and runs nothing, so there is nothing to await.
            if started.is_set():
                with trio.CancelScope(shield=True):
                    stopped = await trio.to_thread.run_sync(finished.wait, ABANDON_WAIT_S)
            self._abandoned(entry, box.get("outcome"), stopped)
            raise
        if "error" in box:
            raise box["error"]
        return box["outcome"]

    def _abandoned(self, entry: dict[str, Any], outcome: Any, stopped: bool) -> None:
        n = entry["n"]
        if outcome is not None and getattr(outcome, "status", None) == "ok":
            # It finished just before the cancel: the next start publishes it (recover).
            log.info("experiment %d finished as the loop stopped; it is published on the next start", n)
            return
        note = "the node stopped during the run" if stopped else f"the trainer did not stop within {ABANDON_WAIT_S:.0f}s"
        self._end(n, status=ABANDONED, record=None, gain=0.0, won=False, note=note)
        log.info("experiment %d abandoned: %s", n, note)

    def _on_progress(self, event: Any) -> None:
        self.control.saw(event)  # from the runner's thread: plain attribute assignments

    def _end(self, n: int, metrics: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
        end = self.journal.end(n, **fields)
        control = self.control
        run = control.current
        start = self.journal.started(n) or {}
        metrics = metrics or {}
        control.results = [*control.results[-(RECENT_RESULTS - 1):], {
            "n": n,
            "candidate": start.get("candidate", ""),
            "operator": start.get("operator", ""),
            "status": end["status"],
            "val_bpb": metrics.get("val_bpb"),
            "steps": metrics.get("steps"),
            "seconds": round(time.monotonic() - run.started_at, 1) if run is not None and run.n == n else None,
            "record": end.get("record"),
            "note": end.get("note", ""),
        }]
        control.last_end = end
        return end

    async def _publish_run(
        self, entry: dict[str, Any], data: dict[str, Any], *, gain: float = 0.0, won: bool = False, promised: tuple[float, float] = (math.nan, math.nan)
    ) -> dict[str, Any]:
        from p2pgolf.protocol.errors import ProtocolError

        try:
            raw, rid = self._sign(entry, data)
        except ProtocolError as exc:
            return self._end(entry["n"], status="unpublishable", record=None, gain=0.0, won=False, note=str(exc)[:200])
        artifact = Path(entry["run_dir"]) / "model.p2pgolf"
        if self.keep_artifact is not None and isinstance(data.get("artifact_sha256"), str) and artifact.is_file():
            self.keep_artifact(artifact, data["artifact_sha256"])  # kept before peers hear of it
        try:
            await self.publish(raw)
        except ProtocolError as exc:
            log.warning("experiment %d: our own record was refused: %s", entry["n"], exc)
        throughput = data.get("throughput") or {}
        degraded = f"DEGRADED: {throughput.get('reason')}" if throughput.get("degraded") else ""
        metrics = data.get("metrics") if isinstance(data.get("metrics"), dict) else {}
        end = self._end(entry["n"], metrics, status="ok", record=rid, gain=gain, won=won, note=degraded[:200], predicted=promised[0], realised=promised[1])
        if degraded:  # join prints every end; the log keeps a degraded one with its reason
            log.info("experiment %d %s", entry["n"], self.control.describe_end(end))
        return end

    def _sign(self, entry: dict[str, Any], data: dict[str, Any]) -> tuple[bytes, str]:
        """The run's record, made once: signing it again (a restart, `p2pgolf publish` of the
        run directory) gives back the same record (node.publishing.sign_run_dir)."""
        from p2pgolf.node.publishing import RESULT_FILE, sign_run_dir
        from p2pgolf.protocol.signing import sign_record

        run_dir = Path(entry["run_dir"])
        if (run_dir / RESULT_FILE).exists():
            signed = sign_run_dir(run_dir, self.identity, build=lambda on_disk: self._record(entry, on_disk), reuse=False)
        else:  # a runner that keeps no run directory (tests' fakes)
            signed = sign_record(self._record(entry, data), self.identity.signing_key)
        return signed.raw, signed.id

    def _record(self, entry: dict[str, Any], data: dict[str, Any]) -> Any:
        from p2pgolf.node.publishing import result_from_run
        from p2pgolf.protocol.records import Attestation

        data = {**data, "parents": list(entry["parents"])}
        if entry.get("rationale") is not None:
            # "<proposer>: <its rationale>", then whatever the run itself says (degraded)
            said = f"{entry['operator'].split(':', 1)[-1]}: {entry['rationale']}".strip()
            data["note"] = " | ".join(t for t in (said, data.get("note") or "") if t)[:280]
        result = result_from_run(data, self.identity.public_hex)
        record: Any = result
        if entry.get("subject"):
            note = f"{entry['operator']} by the research loop"
            if result.note:  # a degraded run says so to whoever weighs the attestation
                note = f"{result.note}"[:280]
            record = Attestation(
                bench=result.bench,
                author=result.author,
                created_ms=result.created_ms,
                subject=entry["subject"],
                method="reproduce",
                tokenizer=result.tokenizer,
                hw=result.hw,
                seed=result.seed,
                metrics=result.metrics,
                artifact=result.artifact,
                trainer=result.trainer,
                note=note,
            )
        return record


def _reason(p: Any) -> str:
    from p2pgolf.node.views.reason import proposal_reason

    return proposal_reason(p)


def _gain_or_nan(value: Any) -> float:
    """A journalled predicted / realised gain; nan where none was kept (older journals, no prediction)."""
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


class Journal:
    """Append-only JSON lines: a `start` entry before each experiment, an `end` entry after."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._starts: dict[int, dict[str, Any]] = {}
        self._ends: dict[int, dict[str, Any]] = {}
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    entry = json.loads(line)
                except ValueError:
                    continue  # a line torn by a crash mid-write: that experiment is re-judged below
                (self._starts if entry.get("event") == "start" else self._ends)[entry["n"]] = entry

    def count(self) -> int:
        """Experiments started so far (finished or not)."""
        return len(self._starts)

    def candidates(self) -> set[str]:
        """Candidate ids of every experiment started so far."""
        return {e["candidate"] for e in self._starts.values()}

    def started(self, n: int) -> dict[str, Any] | None:
        """The start entry of experiment `n`, if it was started."""
        return self._starts.get(n)

    def unfinished(self) -> list[dict[str, Any]]:
        return [self._starts[n] for n in sorted(self._starts) if n not in self._ends]

    def history(self) -> list[Any]:
        """Finished experiments as the bandit's operator outcomes. An abandoned run says nothing
        about the operator that chose it (the user stopped it), so it is left out."""
        return [o for _, o in self.numbered_history()]

    def numbered_history(self) -> list[tuple[int, Any]]:
        """(experiment number, Outcome) of `history`; an experiment's cost is 1 plus what
        choosing it cost (a proposer's seconds over the budget, from its start entry)."""
        from p2pgolf.pool.bandit import Outcome

        return [
            (n, Outcome(self._starts[n]["operator"], bool(e["won"]), float(e["gain"]), float(self._starts[n].get("cost", 1.0)), predicted=_gain_or_nan(e.get("predicted")), realised=_gain_or_nan(e.get("realised"))))
            for n, e in sorted(self._ends.items())
            if n in self._starts and e.get("status") != ABANDONED
        ]  # fmt: skip

    def starts(self) -> list[dict[str, Any]]:
        return [self._starts[n] for n in sorted(self._starts)]

    def ends_by_n(self) -> dict[int, dict[str, Any]]:
        return dict(self._ends)

    def ends(self) -> list[dict[str, Any]]:
        return [self._ends[n] for n in sorted(self._ends)]

    def start(self, n: int, *, proposal: Any, seed: int, run_dir: str, **extra: Any) -> dict[str, Any]:
        """Journal an experiment's start; `extra` (a proposer's rationale, the choice's cost) is kept with it."""
        entry = {
            "event": "start",
            "n": n,
            "candidate": proposal.candidate,
            "base": proposal.base,
            "diff": dict(proposal.diff),
            "parents": list(proposal.parents),
            "operator": proposal.operator,
            "subject": proposal.subject,
            "seed": seed,
            "run_dir": run_dir,
            **extra,
        }
        self._append(entry)
        self._starts[n] = entry
        return entry

    def end(
        self, n: int, *, status: str, record: str | None, gain: float, won: bool, note: str = "", predicted: float = math.nan, realised: float = math.nan
    ) -> dict[str, Any]:
        """Journal an experiment's end. `predicted` / `realised`: the bandit's promised gain over
        the incumbent and the run's delivered one (bpb); kept only when finite (JSON has no nan)."""
        entry = {"event": "end", "n": n, "status": status, "record": record, "gain": gain, "won": won, "note": note}
        for name, value in (("predicted", predicted), ("realised", realised)):
            if math.isfinite(value):
                entry[name] = float(value)
        self._append(entry)
        self._ends[n] = entry
        return entry

    def _append(self, entry: dict[str, Any]) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())


class VerifyJournal:
    """Append-only JSON lines, one per claim the verify operator checked (or failed to)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict[str, Any]] = []
        if path.exists():
            for line in path.read_text().splitlines():
                try:
                    self.entries.append(json.loads(line))
                except ValueError:
                    continue  # a line torn by a crash: that check is simply done again

    def subjects(self) -> set[str]:
        """Claims not to check again: judged ones, and ones whose check failed MAX_VERIFY_TRIES times."""
        failed: dict[str, int] = {}
        done = set()
        for e in self.entries:
            if e.get("agrees") is None:
                failed[e["subject"]] = failed.get(e["subject"], 0) + 1
                if failed[e["subject"]] >= MAX_VERIFY_TRIES:
                    done.add(e["subject"])
            else:
                done.add(e["subject"])
        return done

    def history(self) -> list[Any]:
        from p2pgolf.pool.verify_policy import VerifyRecord

        return [VerifyRecord(e["subject"], e.get("agrees"), float(e.get("seconds", 0.0)), e.get("author", "")) for e in self.entries]

    def add(self, **entry: Any) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.entries.append(entry)


def _default_base(bench: Any, runs_dir: Path) -> str:
    """The base the bandit starts from with an empty pool: one whose step fits the benchmark's
    budget on this hardware many times (trainer.step_budget.default_base)."""
    from p2pgolf.trainer.backend import BackendUnavailable, resolve_backend
    from p2pgolf.trainer.run_history import past_runs
    from p2pgolf.trainer.step_budget import default_base, run_hardware

    try:
        hw = run_hardware(resolve_backend("auto"), "auto")
    except BackendUnavailable:
        return "smoke-tiny" if bench.task == "smoke-bytes" else "naive-baseline"
    return default_base(bench, hw, bench.budget_s, past_runs(runs_dir))


def _seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
