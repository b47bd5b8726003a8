"""Padding extremes in every parity report: one batch with full, right- and left-padded rows,
single tokens at either end and a row of padding only (``core.data.padding_extremes``). Every
output of the artifact must be finite at every position (pads included: an fp16 softmax over a
fully masked row is where NaN appears), and each row must equal a batch-of-one run of itself
within the artifact's tolerance (a kernel chosen by batch size must not change an answer)."""

from __future__ import annotations

import numpy as np

from debertrt.core.compare import FAILED, Tolerance, judge, merge_errors, output_errors
from debertrt.core.data import TokenSpace, padding_extremes
from debertrt.core.errors import DebertrtError, first_line

PADDING_SEQUENCE = 24


def padding_check(runner, space: TokenSpace, tolerance: Tolerance, sequence: int = PADDING_SEQUENCE) -> dict:
    """Run ``runner`` (active) on the padding-extremes batch and on each of its rows alone; return
    what was run and the criteria ({criterion, output, value, limit, passed}) it gives."""
    feed = padding_extremes(space, sequence)
    rows = feed["input_ids"].shape[0]
    lengths = feed["attention_mask"].reshape(-1, sequence).sum(-1)
    found = {"rows": int(lengths.size), "sequence": sequence, "lengths": sorted({int(n) for n in lengths}),
             "left_padded": int(((feed["attention_mask"].reshape(-1, sequence)[:, 0] == 0) & (lengths > 0)).sum())}
    try:
        batched = runner.infer(feed)
        alone = [runner.infer({n: v[k:k + 1] for n, v in feed.items()}) for k in range(rows)]
    except DebertrtError as exc:  # e.g. an engine whose profiles do not take these shapes
        return {**found, "status": "not run", "reason": first_line(exc), "criteria": []}
    bad = sorted(n for n, v in batched.items() if not np.all(np.isfinite(v)))
    criteria = [{"criterion": "finite at every position (padding extremes)", "output": ", ".join(batched),
                 "value": "inf/NaN in " + ", ".join(bad) if bad else "finite", "limit": "finite", "passed": not bad}]
    if not bad:
        errors = {name: merge_errors([output_errors(single[name], batched[name][k:k + 1],
                                                    feed["attention_mask"][k:k + 1], tolerance.for_output(name))
                                      for k, single in enumerate(alone)]) for name in batched}
        verdict, rows_criteria = judge(errors, None, tolerance)
        for c in rows_criteria:
            c["criterion"] = f"batch = batch-of-one: {c['criterion']}"
        criteria += rows_criteria
    return {**found, "status": "ran", "criteria": criteria}


def with_padding(verdict: str, criteria: list[dict], padding: dict) -> tuple[str, list[dict]]:
    """An artifact's verdict and criteria with the padding check's added: any failed criterion fails
    it; the padding check alone never passes an artifact nothing else judged."""
    criteria = criteria + padding["criteria"]
    return (FAILED if any(not c["passed"] for c in criteria) else verdict), criteria
