"""What a rewrite did, and why rules did not fire where they did not.

Every attempt is recorded: the rule, the anchor node, and the outcome —

    applied       the rewrite was made (and kept)
    mismatch      the pattern did not fit; ``detail`` says at which slot and what was found
    guard         a guard refused; ``detail`` is its message
    declined      a function found the rewrite does not apply (``NoRewrite``)
    rejected      the edits failed validation and were rolled back; ``detail`` is the reason
    rolled_back   applied, then undone with its whole phase by ``check="numeric"``
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

OUTCOMES = ("applied", "mismatch", "guard", "declined", "rejected", "rolled_back")


@dataclass
class Attempt:
    rule: str
    anchor: str
    op: str
    phase: str
    outcome: str
    detail: str = ""

    def to_dict(self) -> dict:
        return {"rule": self.rule, "anchor": self.anchor, "op": self.op, "phase": self.phase,
                "outcome": self.outcome, "detail": self.detail}


@dataclass
class PhaseCheck:
    """The result of ``check="numeric"`` for one phase."""
    phase: str
    relative_error: float
    tolerance: float
    kept: bool

    def to_dict(self) -> dict:
        return {"phase": self.phase, "relative_error": self.relative_error,
                "tolerance": self.tolerance, "kept": self.kept}


@dataclass
class Report:
    graph: str = ""
    phases: list[str] = field(default_factory=list)
    rules: list[dict] = field(default_factory=list)       # summaries of the rules that ran
    attempts: list[Attempt] = field(default_factory=list)
    checks: list[PhaseCheck] = field(default_factory=list)
    ops_before: dict[str, int] = field(default_factory=dict)
    ops_after: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    remaining: set[str] = field(default_factory=set, repr=False)  # op nodes of the result

    def applied(self, rule: str | None = None) -> int:
        return sum(1 for a in self.attempts if a.outcome == "applied"
                   and (rule is None or a.rule == rule))

    def fired(self) -> dict[str, int]:
        counts = Counter(a.rule for a in self.attempts if a.outcome == "applied")
        return {r["name"]: counts.get(r["name"], 0) for r in self.rules}

    def latest_attempts(self) -> dict[tuple[str, str], Attempt]:
        """The last attempt of each rule at each anchor (anchors are re-tried after nearby rewrites)."""
        latest: dict[tuple[str, str], Attempt] = {}
        for attempt in self.attempts:
            latest[(attempt.rule, attempt.anchor)] = attempt
        return latest

    def not_fired(self) -> dict[str, list[Attempt]]:
        """Per rule, the anchors where it did not fire that are still in the result and that no
        rule rewrote: the nodes a user asks "why is this still here?" about."""
        rewritten = {a.anchor for a in self.attempts if a.outcome == "applied"}
        result: dict[str, list[Attempt]] = {r["name"]: [] for r in self.rules}
        for (rule, anchor), attempt in self.latest_attempts().items():
            if attempt.outcome != "applied" and anchor not in rewritten \
                    and (anchor in self.remaining or not self.remaining):
                result.setdefault(rule, []).append(attempt)
        return result

    def to_dict(self) -> dict[str, Any]:
        fired = self.fired()
        return {
            "graph": self.graph, "phases": self.phases, "seconds": round(self.seconds, 6),
            "rules": [dict(rule, fired=fired.get(rule["name"], 0)) for rule in self.rules],
            "outcomes": dict(Counter(a.outcome for a in self.attempts)),
            "ops_before": self.ops_before, "ops_after": self.ops_after,
            "checks": [c.to_dict() for c in self.checks],
            "attempts": [a.to_dict() for a in self.attempts],
        }


def _op_change(report: Report) -> str:
    ops = sorted(set(report.ops_before) | set(report.ops_after))
    changes = [f"{op} {report.ops_before.get(op, 0)} -> {report.ops_after.get(op, 0)}"
               for op in ops if report.ops_before.get(op, 0) != report.ops_after.get(op, 0)]
    return ", ".join(changes) or "no op count changed"


def format_report(report: Report, explain: bool = False, limit: int = 20) -> str:
    """The report as text: per rule how many times it fired; with ``explain``, for each anchor
    where a rule did not fire (and that no other rule rewrote), why."""
    before, after = sum(report.ops_before.values()), sum(report.ops_after.values())
    lines = [f"rewrite {report.graph}: phases {', '.join(report.phases) or 'none'}; "
             f"{before} ops -> {after} ops in {report.seconds:.3f} s",
             f"  {_op_change(report)}"]
    fired = report.fired()
    width = max((len(name) for name in fired), default=10)
    not_fired = report.not_fired() if explain else {}
    for rule in report.rules:
        name = rule["name"]
        lines.append(f"  {name:<{width}}  fired {fired[name]:>5}  [{rule['phase']}] {rule['description']}")
        if not explain:
            continue
        misses = sorted(not_fired.get(name, []), key=lambda a: (a.outcome != "guard", a.anchor))
        for attempt in misses[:limit]:
            lines.append(f"      {attempt.anchor}: {_why(attempt)}")
        if len(misses) > limit:
            counts = Counter(a.outcome for a in misses[limit:])
            rest = ", ".join(f"{n} {outcome}" for outcome, n in counts.items())
            lines.append(f"      ... and {len(misses) - limit} more ({rest})")
    for check in report.checks:
        verdict = "kept" if check.kept else "ROLLED BACK"
        lines.append(f"  numeric check after phase {check.phase}: relative error "
                     f"{check.relative_error:.2e} (tolerance {check.tolerance:.0e}): {verdict}")
    rejected = [a for a in report.attempts if a.outcome in ("rejected", "rolled_back")]
    if rejected and not explain:
        lines.append(f"  {len(rejected)} rewrite(s) undone; use --explain for the reasons")
    return "\n".join(lines)


def _why(attempt: Attempt) -> str:
    if attempt.outcome == "mismatch":
        return f"pattern mismatch at {attempt.detail}"
    if attempt.outcome == "guard":
        return f"guard {attempt.detail}"
    if attempt.outcome == "declined":
        return f"declined: {attempt.detail}"
    if attempt.outcome == "rejected":
        return f"rejected by validation: {attempt.detail}"
    if attempt.outcome == "rolled_back":
        return f"rolled back: {attempt.detail}"
    return attempt.outcome
