"""The promotion rule: a version whose gate report failed takes an alias only when forced with a reason.

The gate report is in the model card (the gates write it at training), so the rule reads the card alone,
and `Registry.promote` applies it before an alias event is appended. It sits with the registry, not with
the gates: the registry needs the rule and the gates need the registry (a gate compares a new version with
the current holders), so keeping the rule here keeps that one-way.
"""

from __future__ import annotations

from typing import Any

from batchml.errors import PromotionError


def failed_checks(gate_report: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The checks that failed (none for a version without a gate report)."""
    return [c for c in (gate_report or {}).get("checks", []) if c.get("passed") is False]


def describe(c: dict[str, Any]) -> str:
    """`slices: region=north auc = 0.61 (threshold 0.7)` for a message."""
    value = "n/a" if c["value"] is None else f"{c['value']:.4g}"
    threshold = c["threshold"]
    shown = f"{threshold:.4g}" if isinstance(threshold, float) else threshold  # derived ones run long
    return f"{c['gate']}: {c['name']} = {value} (threshold {shown})"


def refuse_promotion(
    ref: str, alias: str, gate_report: dict[str, Any] | None, force: bool, reason: str
) -> list[str]:
    """Raise PromotionError if `ref` failed gates and is not forced with a reason; return what is forced."""
    if force and not reason.strip():
        raise PromotionError(f"forcing {ref} to {alias!r} needs a reason: add --reason '...'")
    failed = [describe(c) for c in failed_checks(gate_report)]
    if failed and not force:
        raise PromotionError(
            f"{ref} failed {len(failed)} gate check(s), so it cannot become {alias!r}: "
            + "; ".join(failed)
            + f". To promote anyway: batchml models promote {ref.replace('@', ' ')} --alias {alias} --force "
            "--reason '...'"
        )
    return failed
