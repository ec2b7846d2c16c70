"""The bandit: which experiment a node runs next, given the estimator's posterior.

Two levels.
- Within each operator: Thompson sampling over its proposals. One joint draw of all
  candidates' values from the posterior (tempered: deviations from the mean scaled by
  `temperature`) scores existing candidates (replicate, try_peer); new candidates are scored by
  a draw of their prior: a mutation by its parent's value minus a draw of the move's gain from
  a surrogate, a recombination by its parents' values composed additively over their nearest
  common ancestor (gains that compose, as SwiGLU and mirrored recurrence did).
- Meta-level, across operators, by recent yield (`meta`):
  "blend" (default): each operator's recent gains over the incumbent (bpb, last `window`
  experiments of this node) give a Normal posterior of its mean gain; a draw of it is credited
  against the operator's best value draw, and the operator with the lowest result runs. The
  model's draw says what looks good now; the yield corrects operators whose draws have been
  optimistic (recombining with another hardware's lineage, say).
  "gain": the operator with the highest drawn gain runs; "yield": Beta posterior of the win
  rate, highest draw runs; "global": the best value draw over all arms, yield ignored.
  In every mode each operator keeps at least `min_share` of the chances, so a dry spell never
  starves it.
  External proposers (`external`: user-plugged programs, node/proposers) are operators here
  too: asked only when chosen, given the best value a built-in operator drew (no model judges
  their ideas before they run), so they win on yield per cost; their losses are not clipped
  (`gain`) and a request that gave nothing counts as an outcome of gain 0. A new one is asked
  first. benchmarks/sim_proposers.py (20 seeds, 4 nodes x 84): a proposer that knows the
  landscape gets 19.5% of experiments and cuts final regret from 0.0084 to 0.0013 bpb; a random
  one gets 1.9% after each node's first 20, but 14.6% of those first 20 (on slow hardware its
  random configs beat the poor baseline, a real yield), and ends 0.0007 +- 0.0011 bpb better
  than none (paired), within its floor's cost. Before the estimator's lineage prior was made
  robust to outlying parent-child gaps, its very bad children (citing the incumbent) widened
  that prior and it ended 0.0033 +- 0.0013 worse, mostly on the slowest class. benchmarks/sim_collective.py chose "blend" at temperature 0.5 (10 seeds: fewer
  experiments to match an isolated node and lower regret than "yield" at 1.0 or 0.5).
- Top-two sampling (after Russo 2016, "Simple Bayesian algorithms for best arm
  identification"): before any operator is asked, with probability beta the run re-measures a
  leader. Why: the challenge accepts a record only when it beats the best by 0.005 nats at
  p < 0.01 over several seeds, so a competitor must spend runs re-measuring what they would
  submit, and a lead that is small against its uncertainty is settled only by such runs. With a
  known budget beta rises from 0 to 1 over the middle `ramp` of it (mean `leader_share`, 0.5 as
  Russo recommends): exploring pays while there is budget left to build on a discovery,
  confirming pays at the end (`leader_probability`). Unknown budget: constant beta.
  Which leader (`leader_temperature`): 0 (default) re-measures the incumbent, the record one
  would submit; 1 the leader of a posterior draw among the top established candidates, as in
  Russo's top-two Thompson sampling. benchmarks/sim_collective.py (40 seeds, 4 nodes x 84,
  hardware-adjusted trust, with foreign moves on): the incumbent puts 56% of runs on the final
  incumbent's lineage (31% on the final incumbent itself) against 48% (19%) for the drawn
  leader, at 22.8 against 21.9 experiments to match an isolated hill climber (within the
  seeds' spread).
- `intensify` (off by default): a new incumbent measured once here is replicated before
  anything builds on it, as SMAC's intensification does; top-two sampling does the same job
  with a share that follows the budget.

Mutation is Thompson sampling on an additive surrogate of single-knob moves (quadratic in the
unit range per numeric knob, one effect per choice for categorical ones), fitted by Bayesian
linear regression to every parent->child pair in the pool, whoever measured it, inside a trust
region around the incumbent. Why: experiments are few (tens per node) and noisy, so a model
that pools every node's moves and explores untried knobs by its own uncertainty beats blind
random perturbation, while staying cheap enough to refit before every experiment. The
surrogate can be made local (as in trust-region BO, `locality`): a move measured far from the
incumbent counts less, because knob effects interact. Fitted globally, mirrored recurrence
tried where no blocks were shared looks worthless, and in one simulated seed (2) no node ever
tried it again; locality 0.5 fixes that seed but, over 20 seeds, costs more than it saves
(the landscape is mostly additive: ~26 -> ~35 experiments to match an isolated node), so it is
off by default.
Moves measured on other hardware classes also count (`foreign_move_sd`), with their variance
raised by foreign_move_sd^2 + (gain/2)^2, and only when trusted keys measured both ends: most
knob effects carry across hardware (architecture, learning rate, MLP width), some do not (batch
size, schedule), so a foreign move informs the search and this hardware's own moves decide. A
node alone on its class otherwise learns every knob by itself. The simulator (40 seeds): 21.9
experiments to match an isolated hill climber with foreign moves at 0.01 against 24.8 without
(22.6 at 0.007, 22.4 at 0.014; all with the drawn leader); nodes that never matched it fell
from 10.6% to 5%.

Calibration and coordination (issue 14). Measured one at a time against the default with
benchmarks/sim_collective.py --variant (tuning seeds 100-107, then held-out seeds 0-15; six 4-node
mixed scenarios, paired over seeds: experiments to the isolated bandit's expected result, and
final regret; load average 2-7 on 2 cpus):
- `confirm_cap` 6 (on by default): tuning -1.6 +- 0.5 experiments, regret -0.0020 +- 0.0010;
  held-out -1.3 +- 0.3 experiments, regret -0.0011 +- 0.0003 bpb, replicate share 53% -> 42%,
  worst class ratio 1.49 -> 1.28 (two nodes 57.7 -> 54.3 experiments). A first whole-family run
  with it on crashed in pool/gmrf.py (an exact-zero fill entry SuperLU leaves out of the factor's
  pattern, a bug of the solve, not of the cap; fixed and tested there); that run was not repeated.
- announcements (the simulator's `announce`, passed as `running`): switching them off was
  -1.8 +- 1.8 on tuning seeds and +0.8 +- 1.0 held-out: no measurable effect either way; kept.
- `floor_margin` 1: +3.3 +- 2.9 experiments, regret +0.0020 +- 0.0016 on tuning seeds: off.
- `calibrate` (measured now that the simulator records predictions): two nodes, tuning seeds
  100-115, +16.7 +- 4.6 experiments, regret +0.0067 +- 0.0023: off. Mutation promises most
  beyond what it delivers (best of ~20 surrogate draws: +0.024 promised, -0.004 delivered) and is
  charged most, while re-measurements (never charged) and try-peer arms (honestly predicted
  worse) are not: mutations fell from ~30 to ~10 per node, meta-level re-measurements rose from
  ~0.4 to ~25. Charging over-promise only works against operators whose promises are comparable.
- `peer_move_sd` 0.01 (issue 14 finding 3): +0.4 +- 3.1 experiments, regret +0.0001 +- 0.0016
  on tuning seeds (narrow +3.5 +- 10.5): no gain shown: off.
- A node alone on its class (two nodes, RTX 4090 and H100; issue 14). Per operator on tuning
  seeds 100-115, per node, against an isolated bandit (realised gain over the incumbent's mean):
  the H100 runs ~30 mutations (isolated: ~41, -0.002), ~10 recombinations with the other
  class's lineage (-0.006, 24% beat the incumbent) and ~3 try-peer runs forced by the operator
  floor (-0.012, 15%); the RTX 4090's foreign recombinations pay (-0.001, 44-56%). On 48 tuning
  seeds (100-147, load 2-5) sharing costs two nodes 2.2 +- 3.4 experiments against no sharing
  (`--null`'s isolated bandits) and cuts their final regret by 0.0019 +- 0.0008 bpb: the 10
  experiments of the held-out seeds 0-15 are mostly their noise (paired se 4-8 at 16 seeds).
  No foreign recombination at all: +3.9 +- 4.2; the floor never forcing try_peer: -2.7 +- 2.9;
  `foreign_temperature` 0: -2.9 +- 2.9; `knob_transfer_sd` 0.05: -1.3 +- 3.1; no foreign moves:
  -0.8 +- 5.9 (16 seeds). Then on the tuning family (two_nodes, base, per_knob_transfer,
  rank_reversal; seeds 100-115; paired over the three 4-node mixed scenarios):
  `floor_foreign` -2.7 +- 2.1 experiments, regret +0.0000 +- 0.0005 (base -11.8 +- 5.0,
  rank_reversal +3.4 +- 3.2, two nodes -0.8 +- 6.6); `foreign_temperature` 0 -1.8 +- 2.6,
  regret +0.0002 +- 0.0007 (two nodes -5.9 +- 5.6); both together -0.1 +- 2.6.
  Held-out seeds 0-15 (six 4-node mixed scenarios, load 2-3.5): `floor_foreign` -1.9 +- 1.7
  experiments (42.7 -> 40.8), regret +0.0005 +- 0.0008; two nodes -6.4 +- 3.2 (61.3 -> 54.9,
  class ratios 1.03 / 1.17 -> 0.89 / 0.79); no scenario worse beyond 1.4 se (base +2.3 +- 5.1
  experiments, heavy_noise regret +0.0033 +- 0.0023). `floor_foreign` is on by default: a win
  in experiments of just over one standard error, negative in aggregate on every set of seeds
  it ran on (single scenarios went both ways), final regret unchanged within its se;
  `foreign_temperature` is off (not run held-out).
What each does:
- `confirm_cap`: a leader measured this often on this hardware (peers' running re-measurements
  of it counted) is settled, its posterior at the noise floor; top-two then re-measures a
  challenger only where an untempered draw ranks it above the leader, else the run explores.
- `running`: candidates peers of this class are training now (announced, or inferred from
  their latest records); a new candidate a peer is training is not proposed again.
- `floor_margin`: the operator floor forces an operator only if its best arm is within this
  many noise sds of the incumbent's mean: it explores without running what the model expects
  to be clearly worse (a node alone on its class otherwise runs foreign try-peer arms).
- `floor_foreign`: when the floor picks try_peer (whose arms are all candidates not measured
  here), it runs only if some arm's posterior mean beats the incumbent's; otherwise the meta
  level chooses as if there were no floor this time (it only stops forcing the operator).
- `foreign_temperature`: the temperature of the draw for candidates not established here (try-
  peer arms, a foreign recombination partner); 0 scores them at their posterior mean, so no arm
  wins on the width of a transfer nobody measured.
- `calibrate`: each operator's recent over-promise (its score's predicted gain over the
  incumbent minus the gain its run realised, `over_promise`) is added to its score at the meta
  level, so an operator whose predictions run optimistic (recombining with a foreign lineage
  through a wide, shrunk posterior, best of many pairs) loses share.

The incumbent is the best candidate established on this hardware by trusted measurements;
mutations start from it, so improvements are kept and regressions reverted.

Strangers' claims (a candidate no trusted evidence backs: pool/untrusted.py) are worth trying,
never believing. Once the node has an incumbent they are not arms of any operator, so whatever
value they state they never win on value, never become a leader to re-measure, a parent to
mutate or recombine; with probability `stranger_share` (after top-two sampling) a choice instead
tries the best-drawn of them, and when nothing else can be proposed one of them runs. So a crowd
of fresh keys or an absurd claim takes at most that share of a node's runs; one run here settles
the claim, since the node's own re-measurement is trusted evidence. Before anything is believed
here they are try-peer arms like any other, scored no better than the best trusted draw.

The simulator figures above count experiments to match the one isolated hill climber of the
same seed and node slot (its "paired run" measure); against the isolated node's expected
result, which is what the benchmark now judges, the same runs need fewer.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from p2pgolf.pool.estimator import CandidateInfo, Posterior
from p2pgolf.pool.proposals import DEFAULT_SPACE, OPERATORS, Dim, Proposal, make_proposal, mutate, recombine, replicate, try_peer
from p2pgolf.pool.trust_weights import OWN
from p2pgolf.protocol import candidates, knobs


def builtin_only(base: str) -> bool:
    """The default `runnable`: built-in base configs run; scripts need their user's approval."""
    return not candidates.is_script_base(base)


@dataclass(frozen=True)
class BanditConfig:
    """Search constants."""

    n_mutations: int = 12  # random single-knob moves scored per choice
    top_k: int = 6  # leaders considered for replicate and recombine
    window: int = 20  # recent outcomes per operator that count
    min_share: float = 0.05  # every operator's floor chance
    step: float = 0.15  # sd of a random move in the unit range
    trust_region: float = 0.3  # largest directed move in the unit range
    move_noise: float = 0.004  # sd of a move's gain beyond the surrogate
    max_replicates: float = 4.0  # do not replicate what trusted runs here measured this often
    temperature: float = 0.5  # scales each draw's deviation from the mean (< 1: exploit more)
    meta: str = "blend"  # how the operator is chosen; see META
    intensify: bool = False  # confirm a new incumbent with a second run here before building on it
    min_support: float = 0.02  # a candidate only discredited keys vouch for is not worth a run
    build_support: float = 0.5  # recombine only what trusted keys measured: strangers' claims are tried first
    leader_share: float = 0.5  # top-two Thompson sampling's beta: mean share of runs that re-measure the drawn leader
    horizon: int | None = None  # experiments this node plans in all (None: unknown, beta stays constant)
    ramp: float = 0.5  # share of the budget over which beta rises from 0 to 1 (0: a step)
    locality: float = math.inf  # length scale (unit range) over which the surrogate trusts moves measured elsewhere
    foreign_move_sd: float = 0.01  # extra sd of a move measured on other hardware (inf: this hardware's moves only)
    leader_temperature: float = 0.0  # which leader beta re-measures: 0 the incumbent, 1 the leader of an untempered draw
    confirm_cap: float = 6.0  # a leader measured this often here (peers' running replicates counted) is settled: no more top-two runs on it
    floor_margin: float = math.inf  # the operator floor runs an operator only if its best arm is within this many noise sds of the incumbent
    calibrate: bool = False  # the meta level charges each operator its recent over-promise (predicted minus realised gain)
    stranger_share: float = 0.05  # chance that a choice tries a candidate only untrusted evidence backs
    peer_move_sd: float = 0.0  # extra sd of a move this node did not measure itself (0: a peer's move counts as one's own)
    floor_foreign: bool = True  # the floor does not force try_peer when every arm's posterior mean is worse than the incumbent's (issue 14: a node alone on its class)
    foreign_temperature: float = math.nan  # temperature of candidates not established here (nan: `temperature`; 0: scored at their mean)


@dataclass(frozen=True)
class Outcome:
    """One finished experiment of this node: which operator, and whether it yielded. An
    external proposer's request that gave no valid proposal is an Outcome too
    (`experiment=False`, gain 0): it cost its `cost` and yielded nothing."""

    operator: str
    won: bool
    gain: float = 0.0  # bpb by which it beat the incumbent (replicate: exposed the leader by)
    cost: float = 1.0  # in experiments: 1 for a run, plus what choosing it cost (a proposer's seconds / the budget)
    experiment: bool = True  # False: a proposer's request that gave nothing to run
    predicted: float = math.nan  # what the bandit's score promised over the incumbent's mean (bpb)
    realised: float = math.nan  # what the run delivered over the incumbent's mean (bpb, negative: worse)


EXTERNAL_PREFIX = "proposer:"  # operator names of external proposers (node/proposers)


@dataclass(frozen=True)
class Choice:
    """The bandit's pick and why."""

    proposal: Proposal
    sampled: float  # the Thompson draw that won within its operator
    operator_draws: dict[str, float]
    incumbent: str | None


def choose(
    posterior: Posterior,
    rng: np.random.Generator,
    *,
    history: Sequence[Outcome] = (),
    remaining: int | None = None,
    space: Sequence[Dim] = DEFAULT_SPACE,
    config: BanditConfig = BanditConfig(),
    default_base: str = "naive-baseline",
    operators: Sequence[str] = OPERATORS,
    default_tokenizer: str = "sp1024",
    runnable: Callable[[str], bool] = builtin_only,
    vocabularies: Mapping[str, Any] | None = None,
    script_tokenizers: Mapping[str, str] | None = None,
    external: Mapping[str, Callable[[], Sequence[Proposal]]] | None = None,
    running: Sequence[str] = (),
    avoid: Collection[str] = (),
) -> Choice:
    """The next experiment. With an empty pool: the default base config itself, or, when a peer
    of this class is training that now (`running`), a mutation of one of its knobs.
    `remaining`: experiments this node has left (overrides `config.horizon`); `history`: this
    node's finished experiments, oldest first. `runnable(base)` says which bases this node may
    train: a candidate of any other base is evidence only, never proposed. `vocabularies` maps
    a runnable script's base to its ScriptVocabulary: its best candidate here is mutated over
    the script's hyperparameters, and its leaders recombined (pool/script_proposals.py); with
    `script_tokenizers` (base -> tokenizer) only its candidates on that tokenizer are built on.
    `external` maps an operator name ("proposer:NAME") to a call that returns that proposer's
    checked proposals: the meta level weighs it like any operator, by its yield per cost, with
    the best value any built-in operator drew (a proposer's ideas have no model value here,
    only a record, so it is chosen over the best-valued operator when its yield is higher);
    it is called only when chosen, and if it gives nothing the next operator in the meta
    level's order runs. Its first proposal runs (the proposer ranks its own ideas).
    `running`: candidate ids that peers of this hardware class are running now (announced, or
    inferred from their latest records): a re-measurement a peer is already making counts as
    made for `confirm_cap`, and a new candidate a peer is already training is not proposed.
    `avoid`: candidate ids that failed on this node (pool/failures.py): never proposed, by any
    operator or proposer (only the empty-pool default can still come back when nothing else is left)."""
    experiments = sum(1 for o in history if o.experiment)
    incumbent = posterior.incumbent()
    if not posterior.candidates:
        proposal = make_proposal(default_base, {}, (), "try_peer", tokenizer=default_tokenizer)
        if proposal.candidate in set(running):
            # a peer of this class trains the default now and its record will be here by the
            # next choice: start one knob away from it instead of running it twice
            origin = CandidateInfo(candidate=proposal.candidate, base=default_base, diff={}, record_ids=(), representative="", parents=(), authors=(),
                                   hw_classes=(), established=0.0, n_results=0, tokenizer=default_tokenizer)  # fmt: skip
            proposal = mutate(origin, rng, space=space) or proposal
        return Choice(proposal, math.nan, {}, None)
    incumbent_runs = incumbent is not None and runnable(posterior.info[incumbent].base)
    avoid = frozenset(avoid)
    if config.intensify and incumbent_runs and incumbent not in avoid and "replicate" in operators and posterior.info[incumbent].established < 1.5:
        # intensification (as in SMAC): one lucky run must not become the base of everything
        proposal = replicate(posterior.info[incumbent])
        return Choice(proposal, float(posterior.mean[posterior.index[incumbent]]), {"replicate": math.inf}, incumbent)
    raw = posterior.sample(rng, 1)[0]
    draw = posterior.mean + config.temperature * (raw - posterior.mean)
    if not math.isnan(config.foreign_temperature):
        # a candidate no trusted run here measured: its spread is mostly how another class's
        # results transfer, which one run of a union or of it here settles little of
        foreign = np.fromiter((posterior.info[c].established < posterior.established_weight for c in posterior.candidates), bool, len(posterior.candidates))
        draw = np.where(foreign, posterior.mean + config.foreign_temperature * (raw - posterior.mean), draw)
    pending = defaultdict(int)
    for c in running:
        pending[c] += 1
    if incumbent is not None and "replicate" in operators and rng.random() < leader_probability(config, experiments, remaining):
        # top-two sampling: the leader (of the mean, or of a draw) is measured again
        leader = drawn_leader(posterior, posterior.mean + config.leader_temperature * (raw - posterior.mean), config)
        if _settled(posterior, leader, pending, config):
            leader = _challenger(posterior, raw, leader, pending, config)
        if leader is not None and leader not in avoid and runnable(posterior.info[leader].base):
            return Choice(replicate(posterior.info[leader]), float(draw[posterior.index[leader]]), {"replicate": math.inf}, incumbent)
    arms = _arms(posterior, draw, incumbent, rng, space, config, operators, runnable)
    strangers = arms.pop(_STRANGERS, [])
    if incumbent is None and strangers:
        # nothing is believed here yet: strangers' claims compete as try-peer arms, after (so
        # never ahead of) trusted ones and scored no better than the best trusted draw
        arms["try_peer"] = arms.get("try_peer", []) + strangers
        strangers = []
    if running:
        # a peer is training it now: its record will be here by the next choice
        arms = {
            op: [(p, sc) for p, sc in v if (not _settled(posterior, p.candidate, pending, config) if op == "replicate" else p.candidate not in pending)]
            for op, v in arms.items()
        }
        arms = {op: v for op, v in arms.items() if v}
        strangers = [(p, sc) for p, sc in strangers if p.candidate not in pending]
    for op, extra in _script_arms(posterior, draw, rng, config, operators, runnable, vocabularies or {}, script_tokenizers or {}).items():
        arms.setdefault(op, []).extend(extra)
    if avoid:  # it failed here: the same run would fail again
        arms = {op: [(p, sc) for p, sc in v if p.candidate not in avoid] for op, v in arms.items()}
        arms = {op: v for op, v in arms.items() if v}
    external = dict(external or {})
    if strangers and ((not arms and not external) or rng.random() < config.stranger_share):
        # exploration with a bounded share: a stranger's claim is tried, never believed (its
        # score is never better than the incumbent's draw, so it promises no gain)
        proposal, score = min(strangers, key=lambda ps: ps[1])
        return Choice(proposal(), float(score), {"try_peer": math.inf}, incumbent)
    if not arms and not external:
        proposal = make_proposal(default_base, {}, (), "try_peer", tokenizer=default_tokenizer)
        return Choice(proposal, math.nan, {}, incumbent)
    yields = operator_draws(history, [op for op in operators if arms.get(op)] + list(external), rng, config)
    over = over_promise(history, list(arms), config) if config.calibrate else {o: 0.0 for o in arms}
    first = max(yields, key=yields.get)
    if yields[first] == math.inf and first in arms and incumbent is not None and _floor_runs_worse(first, arms[first], over.get(first, 0.0), posterior, incumbent, config):
        # the floor explores, but not by running what the model expects to be worse: the meta
        # level chooses as if there were no floor this time
        yields[first] = float(np.mean([v for v in yields.values() if v < math.inf] or [0.0]))
    # An external proposer's idea has no model value here: it is given the best value any
    # built-in operator drew, so that the choice between them is its yield against theirs.
    neutral = min((float(s) for v in arms.values() for _, s in v), default=float(draw[posterior.index[incumbent]]) if incumbent is not None else 0.0)
    # (calibrate) an operator is charged what its scores recently promised beyond what its runs delivered
    value = {o: min(s for _, s in arms[o]) + over.get(o, 0.0) for o in arms} | {o: neutral for o in external}
    for op in _meta_order(yields, value, config):
        if op in external:
            offered = [p for p in external[op]() if p.candidate not in avoid]
            if not offered:
                continue  # broken or silent this time: its request is on its record, the next operator runs
            proposal = offered[0]
            score = float(draw[posterior.index[proposal.candidate]]) if proposal.candidate in posterior.index else neutral
            return Choice(proposal, score, yields, incumbent)
        proposal, score = min(arms[op], key=lambda ps: ps[1])
        if callable(proposal):
            proposal = proposal()
        return Choice(proposal, float(score), yields, incumbent)
    proposal = make_proposal(default_base, {}, (), "try_peer", tokenizer=default_tokenizer)
    return Choice(proposal, math.nan, yields, incumbent)


def _meta_order(yields: Mapping[str, float], value: Mapping[str, float], config: BanditConfig) -> list[str]:
    """The operators in the order the meta level would run them (the first one runs unless it
    is an external proposer that gives nothing)."""
    ops = list(yields)
    if config.meta == "global" and max(yields.values()) < 1.5:
        return sorted(ops, key=lambda o: value[o])
    if config.meta == "blend" and max(yields.values()) < math.inf:
        # the operator's recent gain (a draw) is credited against its best value draw
        return sorted(ops, key=lambda o: value[o] - yields[o])
    return sorted(ops, key=lambda o: -yields[o])


def _floor_runs_worse(op: str, arms, charge: float, posterior: Posterior, incumbent: str, config: BanditConfig) -> bool:
    """Whether the operator floor, forcing `op`, would run an arm the model expects to be worse:
    its best score (plus its calibration charge) beyond `floor_margin` noise sds of the
    incumbent's mean, or (`floor_foreign`) a try-peer arm whose candidates, all measured
    elsewhere, have posterior means no better than the incumbent's."""
    inc_mean = float(posterior.mean[posterior.index[incumbent]])
    if math.isfinite(config.floor_margin) and min(s for _, s in arms) + charge > inc_mean + config.floor_margin * _noise_sd(posterior):
        return True
    return config.floor_foreign and op == "try_peer" and min(float(posterior.mean[posterior.index[p.candidate]]) for p, _ in arms) >= inc_mean


def _noise_sd(posterior: Posterior) -> float:
    return float(posterior.noise_sd)


def _settled(posterior: Posterior, candidate: str, pending: Mapping[str, int], config: BanditConfig) -> bool:
    """Whether another run of `candidate` here would tell little: it was measured (or is being
    measured by peers) `confirm_cap` times on this hardware, its posterior at the noise floor."""
    return posterior.info[candidate].established + pending.get(candidate, 0) >= config.confirm_cap


def _challenger(posterior: Posterior, raw: np.ndarray, leader: str, pending: Mapping[str, int], config: BanditConfig) -> str | None:
    """Top-two's second arm once the leader is settled: the best, in an untempered draw, of the
    other top established candidates not settled themselves, if that draw beats the leader's."""
    idx = posterior.index
    established = sorted((c for c in posterior.candidates if posterior.info[c].established >= posterior.established_weight and c != leader), key=lambda c: posterior.mean[idx[c]])
    open_ = [c for c in established[: config.top_k] if not _settled(posterior, c, pending, config)]
    if not open_:
        return None
    best = min(open_, key=lambda c: raw[idx[c]])
    return best if raw[idx[best]] < raw[idx[leader]] else None


def over_promise(history: Sequence[Outcome], available: Sequence[str], config: BanditConfig = BanditConfig()) -> dict[str, float]:
    """Per operator, how much its recent runs fell short of what their scores promised (mean of
    predicted minus realised gain over its last `window` runs that recorded both, shrunk
    towards 0 by two pseudo-runs; never negative, so luck is not rewarded twice with yield).
    Re-measurements promise nothing new and are not charged."""
    out = {}
    for op in available:
        if op == "replicate":
            out[op] = 0.0
            continue
        gaps = [o.predicted - o.realised for o in reversed(history) if o.operator == op and math.isfinite(o.predicted) and math.isfinite(o.realised)][: config.window]
        out[op] = max(0.0, sum(gaps) / (2.0 + len(gaps))) if gaps else 0.0
    return out


def predicted_and_realised(choice: Choice, measured: float, before: Posterior) -> tuple[float, float]:
    """What a choice promised over the incumbent's mean (its score's margin) and what its run
    delivered (the measurement's margin); nan without an incumbent or a finite score."""
    inc = before.incumbent()
    if inc is None or not math.isfinite(choice.sampled):
        return math.nan, math.nan
    mean = float(before.mean[before.index[inc]])
    return mean - choice.sampled, mean - float(measured)


def leader_probability(config: BanditConfig, done: int, remaining: int | None = None) -> float:
    """Chance that the next run re-measures the drawn leader (top-two Thompson sampling's beta).

    With a known budget (`remaining`, else `config.horizon` minus `done`) it rises linearly from
    0 to 1 over `ramp` of the budget, placed so that its mean over the budget is `leader_share`
    (for leader_share 0.5 and ramp 0.5: none in the first quarter, all in the last): an early
    discovery still has the rest of the budget to be built upon, a late one does not, while the
    record to submit must be shown better over several seeds (the challenge asks p < 0.01).
    Unknown budget: constant `leader_share`."""
    if remaining is None and config.horizon is not None:
        remaining = max(0, config.horizon - done)
    if remaining is None:
        return config.leader_share
    progress = done / max(1, done + remaining)
    # a linear rise from 0 to 1, `ramp` of the budget wide, centred so that its mean is leader_share
    middle = 1.0 - config.leader_share
    if config.ramp <= 0:
        return 1.0 if progress >= middle else 0.0
    return min(1.0, max(0.0, 0.5 + (progress - middle) / config.ramp))


def drawn_leader(posterior: Posterior, draw: np.ndarray, config: BanditConfig = BanditConfig()) -> str:
    """The best, in one posterior draw, of the `top_k` candidates established on this hardware
    (by mean); ValueError if none is established."""
    idx = posterior.index
    established = [c for c in posterior.candidates if posterior.info[c].established >= posterior.established_weight]
    if not established:
        raise ValueError("no candidate is established on this hardware: there is no leader to re-measure")
    established.sort(key=lambda c: posterior.mean[idx[c]])
    return min(established[: config.top_k], key=lambda c: draw[idx[c]])


def operator_draws(history: Sequence[Outcome], available: Sequence[str], rng: np.random.Generator, config: BanditConfig = BanditConfig()) -> dict[str, float]:
    """One Thompson draw of each available operator's yield (per cost) over its recent window;
    with probability min_share per operator, one of them is picked uniformly instead (the
    exploration floor). In the gain and blend modes an external proposer ("proposer:NAME")
    without any outcome yet draws infinity: it is asked first, once, so that it has a record to be judged by."""
    recent: dict[str, list[bool]] = defaultdict(list)
    for outcome in reversed(history):
        if len(recent[outcome.operator]) < config.window:
            recent[outcome.operator].append(outcome.won)
    draws = {}
    if config.meta in ("gain", "blend"):
        gains: dict[str, list[float]] = defaultdict(list)
        for o in reversed(history):
            if len(gains[o.operator]) < config.window:
                gains[o.operator].append(o.gain)
        every = [max(0.0, g) for gs in gains.values() for g in gs]  # a proposer's losses are its own
        centre = float(np.mean(every)) if every else 0.0
        spread = max(float(np.std(every)) if len(every) > 1 else 0.0, 0.002)
        costs = _mean_costs(history, config.window)
        for op in available:
            gs = gains[op]
            # Normal posterior of the mean gain, with one pseudo-run at the overall mean
            m = (centre + sum(gs)) / (1 + len(gs))
            d = float(m + spread / math.sqrt(1 + len(gs)) * rng.standard_normal())
            # yield per cost: an operator whose choices cost more than a run must gain more
            c = costs.get(op, 1.0)
            draws[op] = d / c if d > 0 else d * c
        unheard = [op for op in available if op.startswith(EXTERNAL_PREFIX) and not gains[op]]
        for op in unheard:
            draws[op] = math.inf  # a proposer never heard is asked before anything else, to be assessed
        if not unheard and available and rng.random() < config.min_share * len(available):
            draws[available[int(rng.integers(len(available)))]] = math.inf
        return draws
    for op in available:
        wins = sum(recent[op])
        draws[op] = float(rng.beta(1.0 + wins, 1.0 + len(recent[op]) - wins))
    if available and rng.random() < config.min_share * len(available):
        pick = available[int(rng.integers(len(available)))]
        draws[pick] = 2.0  # the floor: above any Beta draw
    return draws


def _mean_costs(history: Sequence[Outcome], window: int) -> dict[str, float]:
    """Each operator's mean cost per outcome (in runs, at least 1) over its last `window` outcomes."""
    costs: dict[str, list[float]] = defaultdict(list)
    for o in reversed(history):
        if len(costs[o.operator]) < window:
            costs[o.operator].append(o.cost)
    # at least one run each: a cheap empty request must not make a yield look larger
    return {op: max(1.0, float(np.mean(cs))) for op, cs in costs.items()}


def gain(proposal: Proposal, measured: float, before: Posterior) -> float:
    """By how much (bpb) an experiment beat the incumbent as it stood (0 if it did not); for
    a replicate, by how much it showed the leader worse than believed beyond 2 sd. An external
    proposer's is not clipped at 0: how much worse its idea measured counts against it, since
    no model here judged the idea before it ran (a random proposer is starved by its losses)."""
    inc = before.incumbent()
    if inc is None:
        return 0.0
    est = before.estimate(inc)
    if proposal.operator == "replicate":
        return max(0.0, measured - est.mean - 2.0 * est.sd)
    if proposal.operator.startswith(EXTERNAL_PREFIX):
        return float(est.mean - measured)
    return max(0.0, est.mean - measured)


def outcome(proposal: Proposal, measured: float, before: Posterior) -> bool:
    """Whether an experiment yielded: a new candidate (or a peer's) that beat the incumbent as
    it stood, or a replicate that showed the leader is worse than believed (2 sd)."""
    inc = before.incumbent()
    if inc is None:
        return True
    est = before.estimate(inc)
    if proposal.operator == "replicate":
        return measured > est.mean + 2.0 * max(est.sd, 1e-6)
    return measured < est.mean


# ----------------------------------------------------------------------------- arms

_STRANGERS = "try_peer:untrusted"  # the try-peer arms of candidates only untrusted evidence backs


def _arms(posterior, draw, incumbent, rng, space, config, operators, runnable=builtin_only):
    """Arms per operator; try-peer arms of candidates no trusted evidence backs are under
    `_STRANGERS`, scored no better than the incumbent's draw (without an incumbent, than the
    best draw of a candidate trusted evidence backs)."""
    idx = posterior.index
    order = np.argsort(posterior.mean, kind="stable")
    established = [posterior.candidates[i] for i in order if posterior.info[posterior.candidates[i]].established >= posterior.established_weight]
    arms: dict[str, list[tuple[Proposal, float]]] = {op: [] for op in operators}
    if "replicate" in arms:
        for c in established[: config.top_k]:
            if posterior.info[c].established < min(config.max_replicates, config.confirm_cap) and runnable(posterior.info[c].base):
                arms["replicate"].append((_later(replicate, posterior.info[c]), draw[idx[c]]))
    if "try_peer" in arms:
        arms[_STRANGERS] = []
        if incumbent is not None:
            ceiling = float(draw[idx[incumbent]])
        else:
            ceiling = min((float(draw[idx[c]]) for c in posterior.candidates if posterior.info[c].trusted), default=-math.inf)
        for c in posterior.candidates:
            inf = posterior.info[c]
            if inf.established < posterior.established_weight and inf.base and inf.support >= config.min_support and runnable(inf.base):
                if inf.trusted:
                    arms["try_peer"].append((_later(try_peer, inf), draw[idx[c]]))
                else:
                    arms[_STRANGERS].append((_later(try_peer, inf), max(float(draw[idx[c]]), ceiling)))
    if "mutate" in arms and incumbent is not None and not posterior.info[incumbent].is_script:
        arms["mutate"] = _mutations(posterior, draw, incumbent, rng, space, config)
    if "recombine" in arms:
        leaders = [
            c for c in (posterior.candidates[i] for i in order)
            if posterior.info[c].base and not posterior.info[c].is_script and posterior.info[c].support >= config.build_support
        ][: config.top_k]
        arms["recombine"] = _recombinations(posterior, draw, leaders, rng, config)
    return {op: v for op, v in arms.items() if v}


def _script_arms(posterior, draw, rng, config, operators, runnable, vocabularies, tokenizers=None):
    """Mutations of each runnable script's best supported candidate, and recombinations of its
    leaders. No surrogate: a move is scored by its parent's draw plus move noise (the operator's
    yield, at the meta level, says whether such moves pay)."""
    from p2pgolf.pool.script_proposals import mutate_script, recombine_scripts

    idx = posterior.index
    order = posterior.order()  # a stranger's claim is never the script candidate built upon first
    out: dict[str, list] = {"mutate": [], "recombine": []}
    for base, vocab in sorted(vocabularies.items()):
        if not runnable(base):
            continue
        wanted = (tokenizers or {}).get(base)
        mine = [
            c for c in order
            if posterior.info[c].base == base and posterior.info[c].support >= config.min_support and wanted in (None, posterior.info[c].tokenizer)
        ]  # fmt: skip
        if not mine:
            continue
        seen = set(mine)
        if "mutate" in operators:
            parent = posterior.info[mine[0]]
            for _ in range(config.n_mutations):
                p = mutate_script(parent, vocab, rng, step=config.step)
                if p is None or p.candidate in seen:
                    continue
                seen.add(p.candidate)
                score = draw[idx[p.candidate]] if p.candidate in idx else draw[idx[parent.candidate]] + rng.normal(0.0, config.move_noise)
                out["mutate"].append((p, float(score)))
        if "recombine" in operators:
            leaders = [c for c in mine if posterior.info[c].support >= config.build_support][: config.top_k]
            for i, a in enumerate(leaders):
                for b in leaders[i + 1 :]:
                    p = recombine_scripts(posterior.info[a], posterior.info[b], vocab, rng)
                    if p is None or p.candidate in seen:
                        continue
                    seen.add(p.candidate)
                    score = draw[idx[p.candidate]] if p.candidate in idx else 0.5 * (draw[idx[a]] + draw[idx[b]]) + rng.normal(0.0, posterior.lineage_sd)
                    out["recombine"].append((p, float(score)))
    return {op: v for op, v in out.items() if v}


class _later:
    """A proposal made only if its arm wins; knows its candidate for filtering before that."""

    __slots__ = ("make", "info", "candidate")

    def __init__(self, make, info):
        self.make, self.info, self.candidate = make, info, info.candidate

    def __call__(self):
        return self.make(self.info)


def _mutations(posterior, draw, incumbent, rng, space, config):
    parent = posterior.info[incumbent]
    config_parent = _resolved(parent.candidate, parent.base, parent.diff)
    model = MoveModel.fit(posterior, space, centre=config_parent, length=config.locality, foreign_sd=config.foreign_move_sd, peer_sd=config.peer_move_sd)
    theta = draw[posterior.index[incumbent]]
    coeffs = model.sample(rng)
    out = []
    seen = set()
    # one random move per knob (every knob gets a chance), then more at random
    proposals = [mutate(parent, rng, space=space, knob=d.name, step=config.step, config=config_parent) for d in space]
    proposals += [mutate(parent, rng, space=space, step=config.step, config=config_parent) for _ in range(max(0, config.n_mutations - len(space)))]
    for dim in space:  # one move per knob towards the surrogate's sampled optimum
        target = model.best_unit(dim, coeffs, config_parent[dim.name], config.trust_region)
        if target is None:
            continue
        if dim.categorical:
            proposals.append(mutate(parent, rng, space=[Dim(dim.name, choices=(config_parent[dim.name], target))], knob=dim.name, config=config_parent))
        else:
            shift = target - dim.to_unit(float(config_parent[dim.name]))
            proposals.append(mutate(parent, rng, space=space, knob=dim.name, step=config.step / 3, direction=shift, config=config_parent))
    for p in proposals:
        if p is None or p.candidate in seen or p.candidate == incumbent:
            continue
        seen.add(p.candidate)
        if p.candidate in posterior.index:
            score = draw[posterior.index[p.candidate]]
        else:
            gain = sum(model.gain(name, config_parent[name], value, coeffs) for name, value in p.changed)
            score = theta - gain + rng.normal(0.0, config.move_noise)
        out.append((p, float(score)))
    return out


def _recombinations(posterior, draw, leaders, rng, config):
    idx = posterior.index
    out = []
    seen = set()
    for i, a in enumerate(leaders):
        anc_a = posterior.ancestors(a)
        for b in leaders[i + 1 :]:
            anc_b = posterior.ancestors(b)
            if a in anc_b or b in anc_a:
                continue  # same lineage: one already contains the other's ideas
            p = recombine(posterior.info[a], posterior.info[b], rng)
            if p is None or p.candidate in seen:
                continue
            seen.add(p.candidate)
            if p.candidate in idx:
                score = draw[idx[p.candidate]]
            else:
                common = _nearest_common(anc_a, anc_b, posterior)
                if common is not None:
                    score = draw[idx[a]] + draw[idx[b]] - draw[idx[common]]
                else:
                    score = 0.5 * (draw[idx[a]] + draw[idx[b]])
                score += rng.normal(0.0, posterior.lineage_sd)
            out.append((p, float(score)))
    return out


def _nearest_common(anc_a: set[str], anc_b: set[str], posterior: Posterior) -> str | None:
    common = anc_a & anc_b
    if not common:
        return None
    # the most recent common ancestor: the one with the most ancestors of its own
    return max(sorted(common), key=lambda c: len(posterior.ancestors(c)))


# ----------------------------------------------------------------------------- surrogate


@dataclass
class MoveModel:
    """Additive surrogate of single-knob moves: value(x) = sum_k f_k(x_k), with f_k quadratic in
    the unit range (numeric) or one effect per choice (categorical). Each f_k is fitted by
    Bayesian linear regression to the gains of parent->child pairs that changed only knob k."""

    dims: dict[str, Dim]
    means: dict[str, np.ndarray]
    chols: dict[str, np.ndarray]

    PRIOR_SD_NUMERIC = (0.1, 0.1)  # linear and quadratic coefficients, bpb per unit range
    PRIOR_SD_CHOICE = 0.02

    @classmethod
    def fit(
        cls,
        posterior: Posterior,
        space: Sequence[Dim],
        *,
        local_only: bool = True,
        centre: Mapping[str, Any] | None = None,
        length: float = math.inf,
        foreign_sd: float = math.inf,
        peer_sd: float = 0.0,
    ) -> "MoveModel":
        """Fit to the pool's single-knob moves; with `centre` (a resolved config) and a finite
        `length`, a move counts with weight exp(-d^2 / 2 length^2), d the distance (unit range;
        1 per differing choice) of its parent from `centre` over the other knobs.
        `local_only`: a move not established on this hardware counts only with a finite
        `foreign_sd`, its variance raised by foreign_sd^2 + (gain / 2)^2, and only if trusted
        keys measured both ends (a stranger's claim does not steer the search).
        `peer_sd` > 0: a move whose child no record of this node's own measured has its variance
        raised by peer_sd^2, so each node's surrogate leans on its own moves and keeps its own
        uncertainty where it has not looked (nodes pooling one surrogate all follow one belief)."""
        dims = {d.name: d for d in space}
        pairs: dict[str, list[tuple[np.ndarray, float, float]]] = defaultdict(list)
        idx = posterior.index
        configs: dict[str, dict] = {}
        own = {a for a, t in posterior.authors.items() if t.status == OWN}

        def config_of(c):
            if c not in configs:
                inf = posterior.info[c]
                configs[c] = _resolved(c, inf.base, inf.diff) if inf.base else {}
            return configs[c]

        for c in posterior.candidates:
            inf = posterior.info[c]
            if len(inf.parents) != 1 or not inf.base or inf.is_script:
                continue
            p = inf.parents[0]
            if not posterior.info[p].base or posterior.info[p].is_script:
                continue
            foreign = local_only and min(inf.established, posterior.info[p].established) < posterior.established_weight
            if foreign and (not math.isfinite(foreign_sd) or min(inf.support, posterior.info[p].support) < 0.5):
                continue
            cc, pc = config_of(c), config_of(p)
            changed = _changed_knobs(c, p, cc, pc)
            if len(changed) != 1 or changed[0] not in dims:
                continue
            k = changed[0]
            gain = float(posterior.mean[idx[p]] - posterior.mean[idx[c]])
            var = float(posterior.sd[idx[p]] ** 2 + posterior.sd[idx[c]] ** 2) + 0.003**2
            if foreign:
                # most knob effects carry across hardware (architecture, learning rate), some do
                # not (batch size, schedule): a foreign move informs, this hardware's decide
                var += foreign_sd**2 + (0.5 * gain) ** 2
            if peer_sd > 0 and not any(a in own for a in inf.authors):
                var += peer_sd**2
            if centre is not None and math.isfinite(length):
                # a move measured far from here says little here: effects interact (mirrored
                # recurrence does nothing without shared blocks), so its variance grows with distance
                d2 = sum(_distance2(dims[j], pc[j], centre[j]) for j in dims if j != k)
                if d2 > 2.0 * 14.0 * length**2:
                    continue  # weight below e^-14: nothing left to learn from it
                var /= math.exp(-0.5 * d2 / length**2)
            pairs[k].append((_features(dims[k], pc[k]) - _features(dims[k], cc[k]), gain, var))
        means, chols = {}, {}
        for name, dim in dims.items():
            prior = np.array(cls.PRIOR_SD_NUMERIC) if not dim.categorical else np.full(len(dim.choices), cls.PRIOR_SD_CHOICE)
            A = np.diag(1.0 / prior**2)
            b = np.zeros(len(prior))
            for x, g, v in pairs.get(name, ()):
                # gain = f(parent) - f(child) = coef . (phi(parent) - phi(child))
                A += np.outer(x, x) / v
                b += x * g / v
            cov = np.linalg.inv(A)
            means[name] = cov @ b
            chols[name] = np.linalg.cholesky((cov + cov.T) / 2 + np.eye(len(b)) * 1e-14)
        return cls(dims, means, chols)

    def sample(self, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """One joint draw of every knob's coefficients."""
        return {k: self.means[k] + self.chols[k] @ rng.standard_normal(len(self.means[k])) for k in self.means}

    def gain(self, name: str, old, new, coeffs: dict[str, np.ndarray]) -> float:
        """Drawn improvement (bpb, positive = better) of moving knob `name` from old to new."""
        dim = self.dims.get(name)
        if dim is None:
            return 0.0
        return float(coeffs[name] @ (_features(dim, old) - _features(dim, new)))

    def best_unit(self, dim: Dim, coeffs: dict[str, np.ndarray], current, radius: float):
        """Where the drawn f_k is lowest within the trust region (unit coordinate, or a choice)."""
        c = coeffs[dim.name]
        if dim.categorical:
            best = dim.choices[int(np.argmin(c))]
            return None if best == current else best
        u0 = dim.to_unit(float(current))
        grid = np.clip(np.linspace(u0 - radius, u0 + radius, 13), 0.0, 1.0)
        values = c[0] * grid + c[1] * grid**2
        u = float(grid[int(np.argmin(values))])
        return None if abs(u - u0) < 1e-9 else u


_RESOLVED: dict[str, dict] = {}


_CHANGED: dict[tuple[str, str], tuple[str, ...]] = {}


def _resolved(candidate: str, base: str, diff) -> dict:
    """Full config of a candidate; memoised by candidate id (the id fixes base and diff)."""
    config = _RESOLVED.get(candidate)
    if config is None:
        if len(_RESOLVED) > 50_000:
            _RESOLVED.clear()
        config = _RESOLVED[candidate] = knobs.resolve(base, diff)
    return config


def _changed_knobs(child: str, parent: str, cc: Mapping[str, Any], pc: Mapping[str, Any]) -> tuple[str, ...]:
    """Knobs whose values differ between two candidates' full configs; memoised by the id pair
    (ids fix the configs), since every decision asks it of every single-parent candidate."""
    key = (child, parent)
    changed = _CHANGED.get(key)
    if changed is None:
        if len(_CHANGED) > 100_000:
            _CHANGED.clear()
        changed = _CHANGED[key] = tuple(k for k in cc if cc[k] != pc[k])
    return changed


def _distance2(dim: Dim, a, b) -> float:
    if dim.categorical:
        return 0.0 if a == b else 1.0
    return (dim.to_unit(float(a)) - dim.to_unit(float(b))) ** 2


def _features(dim: Dim, value) -> np.ndarray:
    if dim.categorical:
        out = np.zeros(len(dim.choices))
        if value in dim.choices:
            out[dim.choices.index(value)] = 1.0
        return out
    u = dim.to_unit(float(value))
    return np.array([u, u * u])
