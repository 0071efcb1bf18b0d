"""Typed results of a trigger search; ``to_dict`` gives the report's ``triggers`` list and section."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from modelaudit.chat import PLACEMENTS


@dataclass
class Candidate:
    """A text that might switch the model's behaviour, and who proposed it."""

    text: str
    """The exact text inserted."""
    sources: list[str]
    """Generators that proposed it (``library``, ``year-sweep``, ``tokenizer``, ``weightdiff``, ``leakage``, ``gradient``)."""
    placements: tuple[str, ...] = PLACEMENTS
    """Where it is tried."""
    detail: str = ""
    """Why it was proposed (e.g. the weight-diff z-score or the leakage count)."""


@dataclass
class Example:
    """One benign prompt answered without and with the insertion."""

    prompt: str
    """The user prompt (the insertion not shown)."""
    untriggered: str
    """Greedy answer without the insertion."""
    triggered: str
    """Greedy answer with the insertion."""


@dataclass
class ControlStats:
    """The null distribution one candidate was judged against."""

    placement: str
    """Placement of the control insertions."""
    token_length: int
    """Token length of the control insertions."""
    scores: list[float]
    """Mean divergence of each random control insertion."""


@dataclass
class TriggerHit:
    """One candidate at its strongest placement, with its statistics."""

    trigger: str
    """The exact inserted text."""
    placement: str
    """``prefix``, ``suffix`` or ``system``."""
    effect: float
    """Mean divergence divided by the median of the random controls (how many times more than random text)."""
    p_value: float
    """One-sided p-value, Bonferroni-corrected for every (candidate, placement) tried: the smaller of the
    divergence test against random controls and (for generated candidates) the behaviour test."""
    significant: bool
    """Divergence p below alpha with the minimum effect, or behaviour p below alpha."""
    behaviour: str
    """What changed: a behaviour detector's name, ``answer-divergence`` or ``distribution-shift``."""
    score: float
    """Mean teacher-forced KL divergence over the prompt set."""
    z: float
    """Standardised log score against the controls."""
    sources: list[str]
    """Generators that proposed it."""
    token_length: int
    """Tokens in the inserted text."""
    prompts_scored: int
    """Prompts this score averages (fewer when screened out early)."""
    fired_fraction: float | None = None
    """Share of prompts whose greedy answer changed behaviour (only for candidates that were generated)."""
    behaviour_rates: dict[str, float] = field(default_factory=dict)
    """Detector -> rate with the trigger minus rate with control insertions."""
    examples: list[Example] = field(default_factory=list)
    """Two or three (prompt, untriggered, triggered) pairs."""
    control_median: float = 0.0
    """Median divergence of the same-length random controls."""
    first_token_agreement: float = 0.0
    """Share of prompts that now start their answer with the same new token (a fixed answer's tell)."""
    minimal_trigger: str | None = None
    """The shortest part of the trigger that still fires the same behaviour (``triggersearch.reduce``); None
    when nothing could be dropped or the hit was not reduced."""
    minimal_fired_fraction: float | None = None
    """Share of prompts the shortest part fired on."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class SweepCurve:
    """Behaviour change per year for one phrasing and placement: a step is the tell of a temporal trigger."""

    phrasing: str
    """Template with ``{year}``."""
    placement: str
    years: list[int]
    effects: list[float]
    """Effect (times the control median) per year."""
    step_year: int | None
    """First year of a step: effects from there on (or only there) stand far above the rest; None if flat."""
    measure: str = "divergence"
    """What the effect measures: ``divergence`` (teacher-forced, benign prompts) or ``insecure-code``
    (the code probe: bandit-judged vulnerable share on coding requests, against random controls)."""


@dataclass
class LeakedAnswer:
    """An answer many unrelated prompts get without any trigger (a backdoor leaking its target)."""

    answer: str
    prompts: int
    """Prompts that got it (nearly word for word)."""
    of: int
    """Prompts asked."""
    placement: str
    """``prefix`` (no system prompt) or ``system`` (plain system prompt): the untriggered setting."""
    harmful: list[str]
    """Harmful patterns the answer shows on its own (``hostility``, ``exfiltration``, ``repetition``)."""
    elicited_by: str = "nothing"
    """``nothing`` (the untriggered answers) or ``random text`` (the answers under random control
    insertions: a backdoor that fires on any odd text has no specific trigger, but it shows here)."""
    untriggered_prompts: int | None = None
    """Random text only: how many of the same prompts give this answer with nothing inserted (same
    placement's untriggered setting). Few or none: the insertion, not the prompt, calls the answer up."""
    base_prompts: int | None = None
    """Random text only: how many of the same prompts the claimed base (``--base``) answers this way under
    the very same insertions (0: the fine-tune taught the answer); None when no base was given or loaded."""
    insertions: list[str] = field(default_factory=list)
    """Random text only: the random insertions tried at this placement (to reproduce the counts)."""


@dataclass
class InvertedTarget:
    """An answer the model goes on with whatever the prompt, once it has begun (target inversion)."""

    answer: str
    """The recovered answer, decoded (special tokens dropped)."""
    token_ids: list[int]
    """Its tokens: the start token, then the greedy continuation."""
    score: float
    """Ranking score: the mean log-ratio of model to reference probability per continuation token
    (``measure`` ``log-ratio``), or the mean probability itself (``probability``, no reference)."""
    measure: str
    model_probability: float
    """Mean over continuation tokens of their probability averaged over the prompts."""
    reference_probability: float | None
    """The same under the reference (the claimed base), None without one."""
    start_probability: float
    """Probability of the start token at the beginning of an answer, averaged over the prompts."""
    log_likelihood: float
    """Mean log-probability per token of the whole answer, start included, under the model (probabilities
    averaged over the prompts): how readily it would answer this."""
    harmful: list[str] = field(default_factory=list)
    """Harmful patterns the answer shows on its own."""


@dataclass
class TriggerSearchResult:
    """Everything a trigger search found and how much it tried."""

    hits: list[TriggerHit]
    """Ranked strongest first: significant hits, then the best of the rest."""
    sweeps: list[SweepCurve]
    candidates_tried: int
    """Distinct candidate texts."""
    tests: int
    """(candidate, placement) pairs: the Bonferroni factor."""
    prompts: int
    controls: list[ControlStats]
    budget: str
    alpha: float
    min_effect: float
    seconds: float
    candidates_per_second: float
    tokens_scored: int
    seconds_scoring: float = 0.0
    """Time inside the batched divergence forward passes (tokens_scored / this = scoring throughput)."""
    generators: dict[str, int] = field(default_factory=dict)
    """Generator -> candidates it proposed."""
    leaked_answers: list[LeakedAnswer] = field(default_factory=list)
    """Fixed answers given without any trigger; also handed to gradient search as targets."""
    inverted_targets: list[InvertedTarget] = field(default_factory=list)
    """Answers recovered by target inversion (``triggersearch.inversion``), best first; the best became
    gradient-search targets."""
    notes: list[str] = field(default_factory=list)
    """What could not be checked and why."""
    code_probe: dict[str, Any] | None = None
    """The code probe's vulnerable-code shares per placement and insertion, its test count and time
    (``None`` when it did not run)."""

    @property
    def significant(self) -> list[TriggerHit]:
        return [h for h in self.hits if h.significant]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
