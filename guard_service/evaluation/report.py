"""Suite results -> `reports/`: one JSON per suite, and a README.md plus PNGs regenerated from every JSON there, so
suites run separately still add up to one report."""

from __future__ import annotations

import json
from pathlib import Path

from guard_service.evaluation.suites import SUITES
from guard_service.evaluation.suites.base import MODES, SuiteResult

COLORS = {"unguarded": "tab:gray", "guarded": "tab:blue"}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: float | None) -> str:
    if v is None:
        return "n/a"
    if 0 < abs(v) < 1e-3:
        return f"{v:.1e}"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def plot_bars(result: SuiteResult, path: Path) -> None:
    """Grouped bars, unguarded vs guarded; with `recall`, a second panel of what the guard caught per group."""
    plt = _plt()
    groups = list(result.bars)
    panels = 2 if result.recall else 1
    fig, axes = plt.subplots(panels, 1, figsize=(max(6, 1.1 * len(groups)), 4 * panels), squeeze=False)
    ax = axes[0][0]
    width = 0.38
    for k, mode in enumerate(MODES):
        xs = [i + (k - 0.5) * width for i in range(len(groups))]
        values = [result.bars[g].get(mode, 0.0) for g in groups]
        ax.bar(xs, values, width, label=mode, color=COLORS[mode])
        for x, v in zip(xs, values, strict=True):
            ax.text(x, v, _fmt(v), ha="center", va="bottom", fontsize=7)
    ax.set_xticks(range(len(groups)), groups, rotation=20, ha="right", fontsize=8)
    ax.set_ylabel(result.bars_label, fontsize=8)
    ax.set_title(f"{result.suite}: guard off (admin bypass) vs on, {result.model}", fontsize=10)
    ax.legend(fontsize=8)
    if result.recall:
        ax = axes[1][0]
        names = list(result.recall)
        values = [result.recall[g] for g in names]
        ax.bar(range(len(names)), values, 0.6, color="tab:green")
        for x, v in enumerate(values):
            ax.text(x, v, _fmt(v), ha="center", va="bottom", fontsize=7)
        ax.axhline(0.9, color="tab:red", linestyle="--", linewidth=1, label="target 0.90")
        ax.set_ylim(0, 1.1)
        ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
        ax.set_ylabel("recall (prompt or output side)", fontsize=8)
        ax.set_title("share the guard caught", fontsize=10)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_tradeoff(results: list[SuiteResult], path: Path) -> None:
    """Forget score against retain score: the guard should move points down (forget) and not left (retain)."""
    plt = _plt()
    shown = [r for r in results if r.tradeoff]
    fig, axes = plt.subplots(1, len(shown), figsize=(max(7.0, 4.5 * len(shown)), 4.4), squeeze=False)
    for ax, r in zip(axes[0], shown, strict=True):
        for mode, (retain, forget) in r.tradeoff.items():
            ax.scatter([retain], [forget], s=80, color=COLORS[mode], label=mode)
            ax.annotate(mode, (retain, forget), textcoords="offset points", xytext=(6, 6), fontsize=8)
        (u_r, u_f), (g_r, g_f) = r.tradeoff["unguarded"], r.tradeoff["guarded"]
        ax.annotate("", (g_r, g_f), (u_r, u_f), arrowprops={"arrowstyle": "->", "color": "tab:blue"})
        label = {"tofu": ("retain ROUGE-L recall", "forget ROUGE-L recall"),
                 "muse": ("KnowMem retain2", "VerbMem forget")}.get(r.suite, ("retain", "forget"))
        ax.set_xlabel(label[0])
        ax.set_ylabel(label[1])
        top = max(u_f, g_f, u_r, g_r) * 1.15 or 1
        ax.set_xlim(0, top)
        ax.set_ylim(0, top)
        ax.set_title(r.suite)
    fig.suptitle("forget vs retain, unguarded -> guarded\n(down = forgotten, left = utility lost)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(result: SuiteResult) -> list[str]:
    where = ", ".join(f"{k} {v}" for k, v in result.server.items() if isinstance(v, str | int | float))
    lines = [f"## {result.suite}", "", f"Reproduce: `{result.command}`  ", f"Model `{result.model}`, measured "
             f"{result.measured_at} in {result.seconds:.0f} s ({where}).", ""]
    lines += [f"- {n}" for n in result.notes] + [""]
    if result.checks:
        lines += ["| target | measured | goal | met |", "|---|---|---|---|"]
        lines += [f"| {c.name} | {_fmt(c.value)} | {c.op} {c.target:g} | "
                  f"{'yes' if c.met else 'no' if c.met is not None else 'n/a'} |" for c in result.checks]
        lines.append("")
    if result.bars:
        recall = [result.recall.get(g) for g in result.bars] if result.recall else None
        lines += ["| measure | unguarded | guarded |" + (" recall |" if recall else ""),
                  "|---|---|---|" + ("---|" if recall else "")]
        lines += [f"| {g} | {_fmt(v.get('unguarded'))} | {_fmt(v.get('guarded'))} |"
                  + (f" {_fmt(recall[i])} |" if recall else "") for i, (g, v) in enumerate(result.bars.items())]
        lines.append("")
    if result.bars:
        lines += [f"![{result.suite}]({result.suite}.png)", ""]
    lines += ["<details><summary>all metrics</summary>", "",
              "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_fmt(v)} |" for k, v in result.metrics.items()]
    lines += ["", "</details>", ""]
    if result.examples:
        lines += ["<details><summary>examples</summary>", "", "```json",
                  json.dumps(result.examples, indent=1, ensure_ascii=False)[:4000], "```", "", "</details>", ""]
    return lines


PREAMBLE = """Written by `guard-service eval` from the JSON files beside this one (one per suite); each section
names the command that reproduces it. "unguarded" answers come from the same server through the audited admin
bypass, "guarded" ones through the normal path, so the two columns differ by the guard alone. Greedy decoding
throughout."""


def write(result: SuiteResult, out: Path, preamble: str = PREAMBLE) -> list[Path]:
    """Add one suite's result to `out` and regenerate the combined report; return the files written."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{result.suite}.json").write_text(result.model_dump_json(indent=2) + "\n")
    written = [out / f"{result.suite}.json"]
    if result.bars:
        plot_bars(result, out / f"{result.suite}.png")
        written.append(out / f"{result.suite}.png")
    return written + render(out, preamble)


def render(out: Path, preamble: str = PREAMBLE) -> list[Path]:
    """README.md and the trade-off plot from every suite's JSON in `out`."""
    written = []
    results = [SuiteResult.model_validate_json(p.read_text()) for p in sorted(out.glob("*.json"))
               if p.stem in SUITES]
    if any(r.tradeoff for r in results):
        plot_tradeoff(results, out / "tradeoff.png")
        written.append(out / "tradeoff.png")
    lines = ["# Evaluation report", "", preamble, ""] if preamble else ["# Evaluation report", ""]
    if any(r.tradeoff for r in results):
        lines += ["![forget vs retain](tradeoff.png)", ""]
    for r in results:
        lines += _markdown(r)
    (out / "README.md").write_text("\n".join(lines))
    written.append(out / "README.md")
    return written
