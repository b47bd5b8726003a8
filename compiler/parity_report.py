"""The parity report a person reads: Markdown tables of errors, criteria and task agreement,
and a histogram of absolute errors per output. Reads only the saved parity result."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from debertrt.core.artifacts import atomic_path

VERDICT_TEXT = {"passed": "PASSED", "failed": "FAILED", "not judged": "NOT JUDGED"}


def plot_errors(errors: dict[str, dict[str, np.ndarray]], path: Path, task: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = sorted({out for per in errors.values() for out in per})
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 4), squeeze=False)
    for ax, out in zip(axes[0], names):
        for artifact, per in errors.items():
            if out in per and per[out].size:
                values = np.maximum(per[out], 1e-12)
                bins = np.logspace(-12, max(1.0, np.log10(values.max()) + 0.5), 60)
                ax.hist(values, bins=bins, histtype="step", label=artifact, linewidth=1.5)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(f"|artifact - PyTorch fp32| of {out} (non-pad positions)")
        ax.set_ylabel("elements")
        ax.legend(fontsize=8)
    fig.suptitle(f"Absolute error vs the PyTorch fp32 reference ({task})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def overall_line(result: dict) -> str:
    """e.g. "PASSED (6 passed, 3 not judged)"."""
    counts = ", ".join(f"{n} {v}" for v, n in result["counts"].items() if n)
    return f"{VERDICT_TEXT[result['verdict']]} ({counts})"


def data_line(data: dict) -> str:
    which = f"seed {data['seed']}" if "seed" in data else (
        f"examples {_ranges(data['example_numbers'])} of the file" if "example_numbers" in data else "all examples")
    return f"{data['source']} — {data['examples']} examples in {data['batches']} batches ({which})"


def coverage_lines(data: dict) -> list[str]:
    """What the data covered: lengths, padding, the tokenizer, truncation and windows."""
    lines = []
    if "lengths" in data:
        n, p = data["lengths"], data["padding"]
        lines.append(f"Lengths covered: {n['min']}–{n['max']} tokens (batches padded to "
                     f"{', '.join(map(str, n['padded_to']))}); rows: {p['full']} full, {p['right_padded']} "
                     f"right-padded, {p['left_padded']} left-padded, {p['length_1']} of one token, "
                     f"{p['all_padding']} all padding.")
    if "tokenizer" in data:
        t = data["tokenizer"]
        lines.append(f"Tokenizer: {t['class']} ({'fast' if t['fast'] else 'slow'}, {t['source']}).")
    if "truncated" in data:
        t = data["truncated"]
        lines.append(f"Truncated: {t['examples']} examples cut to {t['limit']} tokens (longest {t['longest']}).")
    if "windows" in data:
        w = data["windows"]
        lines.append(f"Windows: {w['examples_split']} examples split into windows of {w['max_length']} tokens "
                     f"sharing {w['stride']}; {w['windows']} windows in all, answers merged back per example.")
    return lines


def _ranges(numbers: list[int]) -> str:
    """[1, 2, 3, 7] -> "1-3, 7" (the first 8 runs, then a count)."""
    runs, start = [], None
    for k, n in enumerate(numbers):
        if start is None:
            start = n
        if k + 1 == len(numbers) or numbers[k + 1] != n + 1:
            runs.append(f"{start}-{n}" if n > start else str(n))
            start = None
    return ", ".join(runs[:8]) + (f", … ({len(runs) - 8} more runs)" if len(runs) > 8 else "")


def render_markdown(result: dict) -> str:
    lines = [
        f"# Parity report: {result['model']} ({result['task']})",
        "",
        f"Reference: PyTorch fp32. Data: {data_line(result['data'])}; per-token outputs compared on non-pad "
        f"positions only.",
        "",
        *(line for text in coverage_lines(result["data"]) for line in (text, "")),
        f"**Overall: {overall_line(result)}**",
        "",
        "| artifact | precision | runtime | output | max abs | mean abs | min row cosine | max row rel err | "
        "within atol/rtol | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for e in result["artifacts"]:
        name = Path(e["path"]).name
        verdict = VERDICT_TEXT[e["verdict"]]
        if e["status"] != "ran":
            lines.append(f"| {name} | {e['precision']} | {e.get('runtime', '-')} | — | not run: {e['reason']} "
                         f"| | | | | {verdict} |")
            continue
        for out, m in e["outputs"].items():
            lines.append(f"| {name} | {e['precision']} | {e['runtime']} | {out} | {fmt(m['max_abs'])} | "
                         f"{fmt(m['mean_abs'])} | {fmt(m['min_row_cosine'], 6)} | {fmt(m['max_row_rel_error'])} | "
                         f"{m['within_tol']:.2%} | {verdict if e['verdict'] == 'passed' else f'**{verdict}**'} |")
    lines += ["", "## Criteria", "", "| artifact | criterion | output | value | limit | result |",
              "|---|---|---|---|---|---|"]
    for e in result["artifacts"]:
        name = Path(e["path"]).name
        if not e["criteria"]:
            why = e.get("reason") or "no criterion applies to this precision and task"
            lines.append(f"| {name} | — | — | — | — | not judged: {why} |")
        for c in e["criteria"]:
            lines.append(f"| {name} | {c['criterion']} | {c['output']} | {fmt(c['value'], 6)} | {c['limit']} | "
                         f"{'pass' if c['passed'] else '**FAIL**'} |")
    lines += ["", "## Padding extremes", "",
              "One batch of full, right- and left-padded rows, single tokens and a row of padding only; every "
              "output finite at every position, and each row equal to a batch-of-one run of itself (criteria above).",
              "", "| artifact | rows | lengths | left-padded | status |", "|---|---|---|---|---|"]
    for e in result["artifacts"]:
        p = e.get("padding")
        if p:
            status = "ran" if p["status"] == "ran" else f"not run: {p['reason']}"
            lines.append(f"| {Path(e['path']).name} | {p['rows']} | {', '.join(map(str, p['lengths']))} | "
                         f"{p['left_padded']} | {status} |")
    lines += ["", "## Task agreement with the reference", "",
              "| artifact | agreement | metric | reference | artifact |", "|---|---|---|---|---|"]
    for e in result["artifacts"]:
        if e["status"] != "ran":
            continue
        task = e["task"]
        agree = ", ".join(f"{k} {v:.2%}" for k, v in task["agreement"].items()) or "-"
        lines.append(f"| {Path(e['path']).name} | {agree} | {task.get('metric', '-')} | "
                     f"{fmt(task.get('reference'))} | {fmt(task.get('artifact'))} |")
    if result.get("notes"):
        lines += ["", "## Not done, and why", ""] + [f"- {note}" for note in result["notes"]]
    if result.get("plot"):
        lines += ["", f"![error histogram]({result['plot']})"]
    return "\n".join(lines) + "\n"
