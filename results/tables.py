"""Table 1 as text: the wide table (`table1`), Markdown, LaTeX (booktabs) and CSV files (`write_tables`)."""
from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from results.naming import LOWER_IS_BETTER, METRIC_LABELS
from results.references import synthetic_references
from results.stats import WHICH, reference_numbers, table1_numbers


WHICH_LABELS = {"last": "last", "best": "best (test-selected)", "paper": "paper"}


OUTSIDE_MARK = "†"


def _digits(*values) -> int:
    """Decimals to print: two for FID-sized numbers (published FIDs are compared to 0.01), at least three
    significant figures below 1."""
    finite = [abs(v) for v in values if v is not None and v == v and v != 0]
    big = max(finite) if finite else 0
    if big >= 1 or big == 0:
        return 2
    return max(3, 2 - math.floor(math.log10(big)))


def format_cell(r, latex: bool = False) -> str:
    """One of our cells as text: value, spread, seeds, interval, difference to the paper, mark."""
    if r.n == 0:
        return f"\\textit{{{_tex(r.note)}}}" if latex else (r.note or "no value")
    d = _digits(r.mean, r.paper)
    if getattr(r, "reference", False) == True:  # noqa: E712 (numpy and pandas booleans too)
        return f"{r.mean:.{d}f} ({_tex(r.note) if latex else r.note})"
    pm = " $\\pm$ " if latex else " ± "
    text = f"{r.mean:.{d}f}"
    if r.n == 1:
        extra = "n=1, no CI"
    else:
        text += f"{pm}{r.std:.{d}f}"
        extra = f"n={r.n}, CI [{r.ci_low:.{d}f}, {r.ci_high:.{d}f}]"
    if r.comparable:
        extra += f", Δ {r.diff:+.{d}f}" if not latex else f", $\\Delta$ {r.diff:+.{d}f}"
    elif r.not_comparable:
        extra += f", {r.not_comparable}"
    mark = ("$^\\dagger$" if latex else f" {OUTSIDE_MARK}") if r.paper_outside_ci else ""
    note = f"; {r.note}" if r.note else ""
    if latex:
        return f"{text}{mark} {{\\scriptsize ({extra}{_tex(note)})}}"
    return f"{text}{mark} ({extra}{note})"


def format_paper(r, latex: bool = False) -> str:
    if r.paper != r.paper:
        return "\\textit{no published value}" if latex else "no published value"
    text = f"{r.paper:.{_digits(r.paper)}f}"
    return f"{text} ({_tex(r.paper_selection) if latex else r.paper_selection})" if r.paper_selection else text


def metric_label(metric: str) -> str:
    label = METRIC_LABELS.get(metric, metric)
    return f"{label} {'↓' if metric in LOWER_IS_BETTER else '↑'}"


def which_label(metric: str, which: str) -> str:
    """'best (test-selected)' for a value that picks its checkpoint, 'at FID-best epoch (test-selected)' for
    one read at another value's best checkpoint (eval.registry.VALUES[...].at)."""
    from eval.registry import VALUES

    if which == "best" and metric in VALUES and VALUES[metric].at is not None:
        return "at the FID-best epoch (test-selected)"
    return WHICH_LABELS[which]


def table1(df: pd.DataFrame, paper: pd.DataFrame | None = None, numbers: pd.DataFrame | None = None) -> pd.DataFrame:
    """Table 1 as text: rows = methods, columns = (dataset, metric, last | best | paper). Our cells read
    'mean ± std (n=…, CI […], Δ vs paper)', with † where the paper's number is outside our 95% CI."""
    numbers = table1_numbers(df, paper) if numbers is None else numbers
    cells = {}
    fields = {}
    for r in numbers.itertuples():
        cells[(r.method, (r.dataset, metric_label(r.metric), which_label(r.metric, r.which)))] = format_cell(r)
        cells[(r.method, (r.dataset, metric_label(r.metric), "paper"))] = format_paper(r)
        fields.setdefault((r.dataset, metric_label(r.metric)), [which_label(r.metric, w) for w in WHICH] + ["paper"])
    rows = list(dict.fromkeys(m for m, _ in cells))
    cols = [(d, m, f) for (d, m), names in fields.items() for f in names]
    table = pd.DataFrame([[cells.get((m, c), "") for c in cols] for m in rows], index=pd.Index(rows, name="method"),
                         columns=pd.MultiIndex.from_tuples(cols, names=["dataset", "metric", "value"]))
    return table


LEGEND = (f"Each cell: mean ± sample std over the seeds that finished (n), 95% CI (Student t; n=1 has none), "
          f"Δ = ours − paper, given only where the paper's protocol matches (same FID mode, checkpoint selection "
          f"and image counts; otherwise the cell says why not). {OUTSIDE_MARK}: the paper's number lies outside "
          "our 95% CI. Each FID column is one mode: legacy_pytorch (pytorch-fid's Inception and resize, the "
          "papers' protocol) or clean (clean-fid's); modes are never mixed. 'last': the final checkpoint; "
          "'best (test-selected)': the best of the scored checkpoints (the final one included), selected on the "
          "test split, as the papers did (optimistic); other metrics are read at the FID-best epoch. "
          "↓ lower is better, ↑ higher is better.")


def _md_table(header: list[str], rows: list[list[str]]) -> str:
    esc = lambda s: str(s).replace("|", "\\|")  # noqa: E731
    lines = ["| " + " | ".join(map(esc, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(esc, row)) + " |" for row in rows]
    return "\n".join(lines)


def runs_summary(df: pd.DataFrame) -> pd.DataFrame:
    runs = df.drop_duplicates("run_id")
    return runs.groupby(["dataset", "method", "status"]).size().unstack("status", fill_value=0)


def protocol_lines(df: pd.DataFrame) -> list[str]:
    runs = df.drop_duplicates("run_id")
    fid_runs = df.loc[df["metric"].isin(["fid_last", "fid_standin_last"]), "run_id"]
    seg_runs = df.loc[df["metric"] == "mAP_last", "run_id"]
    modes = sorted({m.split("_", 1)[1].rsplit("_", 1)[0].removeprefix("standin_") for m in df["metric"].dropna()
                    if re.fullmatch(r"fid_(standin_)?(clean|legacy_pytorch)_last", m)})
    lines = [f"FID/KID modes scored: {', '.join(modes)} (each column names its mode)"] if modes else []
    for col, label, which in (("fid_mode", "FID mode of runs without it in their names", fid_runs),
                              ("drn_arch", "DRN (Cityscapes scores)", seg_runs),
                              ("git_commit", "git commit", runs["run_id"])):
        sel = runs.loc[runs["run_id"].isin(which), col]
        vals = sorted({str(v)[:12] for v in sel if v not in ("", None) and v == v})
        if vals:
            lines.append(f"{label}: {', '.join(vals)}")
    return lines


def to_markdown(table: pd.DataFrame, df: pd.DataFrame, title: str) -> str:
    parts = [f"# {title}", "", LEGEND, ""]
    parts += [f"- {line}" for line in protocol_lines(df)] + [""]
    for dataset in dict.fromkeys(table.columns.get_level_values("dataset")):
        sub = table[dataset]
        header = ["method"] + [f"{metric} {value}" for metric, value in sub.columns]
        parts += [f"## {dataset}", "", _md_table(header, [[m] + list(row) for m, row in zip(sub.index, sub.values)]), ""]
    summary = runs_summary(df)
    parts += ["## Runs", "", _md_table(["dataset", "method"] + list(summary.columns),
                                       [list(i) + [str(v) for v in row] for i, row in zip(summary.index, summary.values)]),
              ""]
    return "\n".join(parts)


def _tex(text: str) -> str:
    for a, b in (("\\", "\\textbackslash{}"), ("&", "\\&"), ("%", "\\%"), ("_", "\\_"), ("#", "\\#"),
                 ("↓", "$\\downarrow$"), ("↑", "$\\uparrow$"), ("Δ", "$\\Delta$"), ("±", "$\\pm$"),
                 ("†", "$^\\dagger$")):
        text = str(text).replace(a, b)
    return text


def to_latex(numbers: pd.DataFrame, title: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs,graphicx}): datasets over metrics over last/best/paper."""
    cols = list(dict.fromkeys(zip(numbers["dataset"], numbers["metric"])))
    methods = list(dict.fromkeys(numbers["method"]))
    by = {(r.method, r.dataset, r.metric, r.which): r for r in numbers.itertuples()}
    lines = ["\\begin{table*}[t]", "\\centering", f"\\caption{{{_tex(title)}. {_tex(LEGEND)}}}",
             "\\resizebox{\\textwidth}{!}{%", "\\begin{tabular}{l" + "ccc" * len(cols) + "}", "\\toprule"]
    datasets = list(dict.fromkeys(d for d, _ in cols))
    spans = [(d, sum(1 for dd, _ in cols if dd == d)) for d in datasets]
    lines.append(" & " + " & ".join(f"\\multicolumn{{{3 * k}}}{{c}}{{{_tex(d)}}}" for d, k in spans) + " \\\\")
    lines.append(" & " + " & ".join(f"\\multicolumn{{3}}{{c}}{{{_tex(metric_label(m))}}}" for _, m in cols) + " \\\\")
    lines.append("method & " + " & ".join("last & best (test-sel.) & paper" for _ in cols) + " \\\\")
    lines.append("\\midrule")
    for method in methods:
        cells = []
        for d, m in cols:
            last, best = by.get((method, d, m, "last")), by.get((method, d, m, "best"))
            cells += [format_cell(last, True), format_cell(best, True), format_paper(last, True)]
        lines.append(f"{_tex(method)} & " + " & ".join(cells) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table*}", ""]
    return "\n".join(lines)


def write_tables(df: pd.DataFrame, paper: pd.DataFrame, out: Path, title: str,
                 data_root: str | None = None) -> dict[str, Path]:
    """table1.md, table1.csv (the text table), table1_numbers.csv (the numbers), table1.tex, runs.csv.
    A synthetic dataset's table also has the references' rows (`synthetic_references`)."""
    out.mkdir(parents=True, exist_ok=True)
    numbers = table1_numbers(df, paper).assign(reference=False)
    references = reference_numbers(synthetic_references(df, data_root))
    if not references.empty:
        numbers = pd.concat([numbers, references], ignore_index=True)
    table = table1(df, paper, numbers)
    paths = {"md": out / "table1.md", "csv": out / "table1.csv", "numbers": out / "table1_numbers.csv",
             "tex": out / "table1.tex", "runs": out / "runs.csv"}
    paths["md"].write_text(to_markdown(table, df, title), encoding="utf-8")
    flat = table.copy()
    flat.columns = [" | ".join(c) for c in table.columns]
    flat.to_csv(paths["csv"], encoding="utf-8")
    numbers.to_csv(paths["numbers"], index=False, encoding="utf-8")
    paths["tex"].write_text(to_latex(numbers, title), encoding="utf-8")
    df.to_csv(paths["runs"], index=False, encoding="utf-8")
    return paths
