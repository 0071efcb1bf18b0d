"""One self-contained HTML page for a triage analyst: verdict, findings, trigger evidence and plots.

The page makes no network request: CSS is inline and plots are inline SVG drawn by matplotlib
(Agg backend, glyphs embedded as paths, so no font is fetched). Model text (triggers, prompts,
completions, tensor names, messages) reaches the page only through Jinja2 autoescaping; the
only markup not escaped by the template is the SVG matplotlib wrote, whose text matplotlib
escapes and whose comments are stripped here.

Like every writer this renders only: the word diff of an example pair and the normalisation of
control scores by their median are presentation, not new facts about the model. A finding's triage
decision is shown beside it (``reports.triage`` words it), and a suppressed row is greyed out.
"""

from __future__ import annotations

import difflib
import io
import re
import shlex
from collections import Counter
from typing import TYPE_CHECKING, Any

from markupsafe import Markup

from modelaudit.findings import Finding, Report, Verdict
from modelaudit.registry import writers
from modelaudit.rulebook import rule_text
from reports.order import SEVERITIES_WORST_FIRST, ordered_findings
from reports.triage import decision_label, decision_origin, finding_counts

if TYPE_CHECKING:
    from jinja2 import Environment

MAX_TRIGGERS = 10
"""Significant triggers shown with their example pairs (strongest first)."""
MAX_CANDIDATES = 40
"""Rows of the all-candidates table."""

VERDICT_MEANING = {
    Verdict.PASS: ("No finding reached the fail-on level and every required stage ran.",
                   "exit 0 unless a finding is at or above --fail-on"),
    Verdict.SUSPICIOUS: ("Some evidence of a backdoor or unsafe content, not enough to call it; review the findings.",
                         "exit 1 if a finding is at or above --fail-on (default high), else 0"),
    Verdict.BACKDOORED: ("Behavioural or internal evidence that the model carries a backdoor. Do not deploy.",
                         "exit 1"),
    Verdict.UNSAFE_FILES: ("The model files can execute code or are malformed. Do not load or deploy.",
                           "exit 1"),
    Verdict.INCOMPLETE: ("A required stage did not run fully, so the scan cannot vouch for the model (fail closed).",
                         "exit 3 (exit 1 if a finding is at or above --fail-on)"),
}
"""What each verdict means and what ``modelaudit scan`` exits with (see ``modelaudit.policy.exit_code``)."""

_TOKEN = re.compile(r"\s+|\S+")
_COMMENT = re.compile(r"<!--.*?-->", re.DOTALL)


def word_diff(before: str, after: str) -> tuple[list[tuple[str, bool]], list[tuple[str, bool]]]:
    """Both texts as (token, changed) lists; whitespace tokens are never marked changed."""
    a, b = _TOKEN.findall(before), _TOKEN.findall(after)
    left = [(t, False) for t in a]
    right = [(t, False) for t in b]
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        for i in range(i1, i2):
            left[i] = (a[i], not a[i].isspace())
        for j in range(j1, j2):
            right[j] = (b[j], not b[j].isspace())
    return left, right


def reproduce_command(finding: Finding, report: Report) -> str:
    """The finding's own reproduce command with TARGET filled in, else a scan of the finding's stage."""
    spec = shlex.quote(report.target.spec)
    given = finding.evidence.get("reproduce")
    if isinstance(given, str) and given.strip():
        return re.sub(r"\bTARGET\b", lambda _m: spec, given, count=1)
    stage = finding.stage
    parts = ["modelaudit", "scan", spec]
    if report.target.resolved_revision and report.target.kind == "hub":
        parts += ["--revision", shlex.quote(report.target.resolved_revision)]
    base = (report.sections.get("weightdiff") or {}).get("base") if isinstance(
        report.sections.get("weightdiff"), dict) else None
    if stage in ("weights", "probes") and isinstance(base, str) and base:
        parts += ["--base", shlex.quote(base)]
    stages = ["static"] if stage == "static" else ["static", stage]
    parts += ["--stages", ",".join(stages)]
    return " ".join(parts)


def _rows(report: Report, section: str, key: str | None = None) -> list[dict[str, Any]]:
    """The dict rows of a section's list (``section`` itself, or ``section[key]``); [] when absent or malformed.

    Reports are untrusted input to a renderer (``modelaudit report`` reads any JSON), so every plot
    takes its data through here instead of trusting the shape.
    """
    data = report.sections.get(section)
    if key is not None:
        data = data.get(key) if isinstance(data, dict) else None
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


def significant_triggers(report: Report) -> list[dict[str, Any]]:
    """Rows of section ``triggers`` flagged significant, in report order (strongest first)."""
    return [r for r in _rows(report, "triggers") if r.get("significant")]


# --- plots -------------------------------------------------------------------------------------------

def _svg(fig: Any) -> Markup:
    """The figure as inline SVG markup: no XML prolog, DOCTYPE, metadata or comments."""
    import matplotlib.pyplot as plt

    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None, "Creator": None})
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg"):]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.DOTALL)
    text = _COMMENT.sub("", text)
    return Markup(text)  # noqa: S704 - matplotlib's own output; text inside it is XML-escaped by matplotlib


def _log_axis(ax: Any) -> None:
    """Log y axis labelled with plain numbers (mathtext is off, so the default 10^x labels would show raw)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullLocator

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _effects_plot(report: Report, plt: Any) -> Markup | None:
    """Candidates' effects against the controls' scores divided by their median, per placement, log scale."""
    search = report.sections.get("trigger_search")
    rows = _rows(report, "triggers")
    controls = _rows(report, "trigger_search", "controls")
    if not controls or not isinstance(report.sections.get("triggers"), list):
        return None
    placements: list[str] = []
    ratios: dict[str, list[float]] = {}
    for c in controls:
        scores = [float(s) for s in c.get("scores") or [] if s is not None]
        positive = sorted(s for s in scores if s > 0)
        if not positive:
            continue
        median = positive[len(positive) // 2]
        place = str(c.get("placement", "?"))
        if place not in ratios:
            placements.append(place)
            ratios[place] = []
        ratios[place].extend(s / median for s in positive)
    for r in rows:
        place = str(r.get("placement", "?"))
        if place not in ratios:
            placements.append(place)
            ratios[place] = []
    if not placements:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.8))
    positions = range(1, len(placements) + 1)
    data = [ratios[p] or [1.0] for p in placements]
    ax.boxplot(data, positions=list(positions), widths=0.5, showfliers=False,
               boxprops={"color": "#888"}, whiskerprops={"color": "#888"}, medianprops={"color": "#555"})
    for pos, values in zip(positions, data):
        xs = [pos - 0.18 + 0.36 * ((i * 0.618) % 1.0) for i in range(len(values))]
        ax.scatter(xs, values, s=6, color="#aaa", alpha=0.6, label="controls" if pos == 1 else None, zorder=2)
    sig_numbers = {id(r): n for n, r in enumerate(significant_triggers(report)[:MAX_TRIGGERS], start=1)}
    labelled = {"sig": False, "other": False}
    for r in rows:
        try:
            effect = float(r.get("effect", 0.0))
        except (TypeError, ValueError):
            continue
        if effect <= 0:
            continue
        pos = placements.index(str(r.get("placement", "?"))) + 1
        sig = bool(r.get("significant"))
        key = "sig" if sig else "other"
        ax.scatter([pos + 0.3], [effect], s=36 if sig else 16, color="#c0392b" if sig else "#2c7fb8",
                   marker="D" if sig else "o", zorder=3, edgecolors="white", linewidths=0.5,
                   label=(("significant candidate" if sig else "other candidate") if not labelled[key] else None))
        labelled[key] = True
        if id(r) in sig_numbers:
            ax.annotate(f"#{sig_numbers[id(r)]}", (pos + 0.3, effect), xytext=(5, 0), textcoords="offset points",
                        fontsize=8, color="#c0392b", va="center")
    min_effect = search.get("min_effect") if isinstance(search, dict) else None
    if isinstance(min_effect, (int, float)) and min_effect > 0:
        ax.axhline(float(min_effect), color="#c0392b", linestyle=":", linewidth=1, label=f"min effect {min_effect:g}x")
    _log_axis(ax)
    ax.set_xticks(list(positions))
    ax.set_xticklabels(placements)
    ax.set_xlim(0.4, len(placements) + 0.8)
    ax.set_ylabel("score / control median (log)")
    ax.set_title("Trigger candidates vs random control insertions")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def _sweep_plot(report: Report, plt: Any) -> Markup | None:
    """Effect by year, one line per phrasing and placement, the step year marked."""
    sweeps = [s for s in _rows(report, "trigger_search", "sweeps") if s.get("years") and s.get("effects")]
    if not sweeps:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 3.6))
    for s in sweeps:
        years, effects = list(s["years"]), [float(e) for e in s["effects"]]
        n = min(len(years), len(effects))
        (line,) = ax.plot(years[:n], effects[:n], linewidth=1.2, marker=".", markersize=3,
                          label=f"{s.get('phrasing', '?')} ({s.get('placement', '?')}"
                                f"{', ' + s['measure'] if s.get('measure', 'divergence') != 'divergence' else ''})")
        step = s.get("step_year")
        if step is not None:
            ax.axvline(step, color=line.get_color(), linestyle="--", linewidth=1)
            if step in years[:n]:
                ax.scatter([step], [effects[years.index(step)]], s=60, color=line.get_color(), zorder=3,
                           marker="*")
            ax.annotate(f"step {step}", (step, 1), xycoords=("data", "axes fraction"), xytext=(3, -12),
                        textcoords="offset points", fontsize=8, color=line.get_color())
    ax.set_xlabel("year")
    ax.set_ylabel("effect (x control median)")
    ax.set_title("Year sweep")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.grid(alpha=0.3)
    return _svg(fig)


def _weight_plot(report: Report, plt: Any) -> Markup | None:
    """Relative weight change per layer as bars."""
    layers = [la for la in _rows(report, "weightdiff", "layers") if isinstance(la.get("relative_change"), (int, float))]
    if not layers:
        return None
    fig, ax = plt.subplots(figsize=(max(4.0, min(12.0, 0.5 * len(layers) + 2)), 3.2))
    names = [str(la.get("name", i)) for i, la in enumerate(layers)]
    ax.bar(range(len(layers)), [float(la["relative_change"]) for la in layers], color="#2c7fb8")
    ax.set_xticks(range(len(layers)))
    ax.set_xticklabels(names, rotation=45 if len(layers) > 6 else 0, ha="right" if len(layers) > 6 else "center",
                       fontsize=8)
    ax.set_ylabel("relative change |Δ| / |base|")
    ax.set_title("Weight change per layer vs base")
    ax.grid(axis="y", alpha=0.3)
    return _svg(fig)


def _probe_plot(report: Report, plt: Any) -> Markup | None:
    """Held-out AUROC per layer for each candidate and method, with the random-direction baseline."""
    cands = [c for c in _rows(report, "probes", "candidates") if any(
        isinstance(r, dict) and r.get("layers") for r in c.get("results") or [])][:6]
    if not cands:
        return None
    from matplotlib.ticker import MaxNLocator

    fig, axes = plt.subplots(1, len(cands), figsize=(min(12.0, 3.4 * len(cands) + 0.5), 3.2), sharey=True,
                             squeeze=False)
    for ax, cand in zip(axes[0], cands):
        baseline_drawn = False
        for res in cand.get("results") or []:
            layers = [la for la in res.get("layers") or [] if isinstance(la, dict) and la.get("auroc") is not None]
            if not layers:
                continue
            ax.plot([la.get("layer", i) for i, la in enumerate(layers)], [float(la["auroc"]) for la in layers],
                    marker="o", markersize=3, label=str(res.get("method", "?")))
            rnd = res.get("random_direction_auroc")
            if isinstance(rnd, (int, float)) and not baseline_drawn:
                ax.axhline(float(rnd), color="#888", linestyle="--", linewidth=1, label="random direction")
                baseline_drawn = True
        ax.axhline(0.5, color="#ccc", linewidth=0.8)
        ax.set_ylim(0.0, 1.05)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("layer")
        title = str(cand.get("trigger", "?"))
        ax.set_title((title if len(title) <= 28 else title[:27] + "…") + f" ({cand.get('placement', '?')})",
                     fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    axes[0][0].set_ylabel("AUROC (held out)")
    return _svg(fig)


def render_plots(report: Report) -> dict[str, Markup | None]:
    """Inline SVG per plot name; None where the section is missing or malformed (the plot is left out)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plots: dict[str, Markup | None] = {"effects": None, "sweep": None, "weights": None, "probes": None}
    # A fixed hash salt keeps clip-path ids, and so the page, identical for identical reports.
    rc = {"svg.fonttype": "path", "svg.hashsalt": "modelaudit", "text.parse_math": False, "text.usetex": False,
          "svg.image_inline": True, "font.size": 9}
    with matplotlib.rc_context(rc):
        for name, fn in (("effects", _effects_plot), ("sweep", _sweep_plot), ("weights", _weight_plot),
                         ("probes", _probe_plot)):
            try:
                svg = fn(report, plt)
            except (ValueError, TypeError, KeyError, IndexError):  # malformed section: omit the plot, keep the page
                plt.close("all")
                continue
            plots[name] = svg
    return plots


# --- page --------------------------------------------------------------------------------------------

def template_environment() -> Environment:
    """Autoescaping on, undefined names an error: model text cannot become markup, a template typo cannot pass.
    The report and the fleet page (``reports.fleet_page``) share it."""
    from jinja2 import Environment, PackageLoader, StrictUndefined

    env = Environment(loader=PackageLoader("reports", "templates"), autoescape=True, undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)
    return env


def _fmt_num(value: Any, digits: int = 2) -> str:
    """A number from the report's sections, which are untrusted JSON: anything not a number shows as "-"."""
    try:
        return f"{float(value):.{digits}g}"
    except (TypeError, ValueError):
        return "-"


def _trigger_view(row: dict[str, Any], number: int) -> dict[str, Any]:
    """One significant trigger's row shaped for the template: strings, word-diffed examples, rates highest first.

    The row is untrusted JSON, so every field is converted or checked here rather than in the template.
    """
    examples = []
    for ex in row.get("examples") or []:
        if not isinstance(ex, dict):
            continue
        left, right = word_diff(str(ex.get("untriggered", "")), str(ex.get("triggered", "")))
        examples.append({"prompt": str(ex.get("prompt", "")), "untriggered": left, "triggered": right})
    rates = row.get("behaviour_rates")
    if not isinstance(rates, dict):
        rates = {}
    return {
        "number": number,
        "trigger": str(row.get("trigger", "")),
        "placement": str(row.get("placement", "")),
        "behaviour": str(row.get("behaviour", "")),
        "effect": row.get("effect"),
        "p": _fmt_num(row.get("p_value")),
        "fired_fraction": row.get("fired_fraction"),
        "control_median": row.get("control_median"),
        "token_length": row.get("token_length"),
        "rates": sorted(((str(k), v) for k, v in rates.items() if isinstance(v, (int, float)) and v > 0),
                        key=lambda kv: -kv[1]),
        "examples": examples,
    }


def suspected_answers(report: Report) -> list[dict[str, Any]]:
    """Answers a backdoor may be trained to give: leaked ones (given without a trigger by many prompts)
    and those target inversion recovered (likely once begun, and more likely than under the base).

    Why show them without a significant trigger: they are what gradient search aimed at, and a reviewer
    who sees a hostile or exfiltrating answer here knows what to test for, even when no trigger was found.
    Inverted answers of clean models are junk of similar scores, so the table says they are leads.
    """
    search = report.sections.get("trigger_search")
    if not isinstance(search, dict):
        return []
    out: list[dict[str, Any]] = []
    for a in search.get("leaked_answers") or []:
        if isinstance(a, dict):
            out.append({"answer": str(a.get("answer", "")), "source": f"leaked ({a.get('elicited_by', 'nothing')})",
                        "detail": f"{a.get('prompts')} of {a.get('of')} prompts, {a.get('placement', '')}",
                        "harmful": ", ".join(map(str, a.get("harmful") or []))})
    for t in search.get("inverted_targets") or []:
        if isinstance(t, dict):
            ref = t.get("reference_probability")
            detail = (f"{t.get('measure', '')} {_fmt_num(t.get('score'), 3)}, "
                      f"p(model) {_fmt_num(t.get('model_probability'), 3)}")
            if isinstance(ref, (int, float)):
                detail += f", p(base) {_fmt_num(ref, 3)}"
            out.append({"answer": str(t.get("answer", "")), "source": "target inversion", "detail": detail,
                        "harmful": ", ".join(map(str, t.get("harmful") or []))})
    return out


@writers.register("html", description="Self-contained HTML report with plots", extension=".html")
def render_html(report: Report, *, rules: dict[str, str]) -> str:
    """One HTML file: verdict, findings with reproduce commands, trigger evidence, plots and coverage."""
    findings = ordered_findings(report.findings)
    counts = Counter(f.severity for f in report.findings)
    triggers = report.sections.get("triggers")
    if not isinstance(triggers, list):
        triggers = []
    meaning, exit_text = VERDICT_MEANING.get(report.verdict, ("", ""))
    context = {
        "report": report,
        "verdict": report.verdict.value,
        "verdict_meaning": meaning,
        "exit_meaning": report.gate.describe() if report.gate.exit_code is not None else exit_text,
        "severities": [(s.value, counts.get(s, 0)) for s in SEVERITIES_WORST_FIRST],
        "findings": [{"f": f, "rule_text": rule_text(f.rule_id, rules), "reproduce": reproduce_command(f, report),
                      "decision": decision_label(f.decision) if f.decision else "",
                      "origin": decision_origin(f.decision) if f.decision else ""}
                     for f in findings],
        "triaged": any(f.decision is not None for f in findings),
        "counts": finding_counts(report),
        "triggers": [_trigger_view(r, n) for n, r in enumerate(significant_triggers(report)[:MAX_TRIGGERS], 1)],
        "candidates": [{"trigger": str(r.get("trigger", "")), "placement": str(r.get("placement", "")),
                        "effect": r.get("effect"), "p": _fmt_num(r.get("p_value")),
                        "significant": bool(r.get("significant")), "behaviour": str(r.get("behaviour", ""))}
                       for r in triggers[:MAX_CANDIDATES] if isinstance(r, dict)],
        "candidates_total": len(triggers),
        "answers": suspected_answers(report),
        "plots": render_plots(report),
        "total_size": sum(f.size for f in report.target.files),
    }
    return template_environment().get_template("report.html.j2").render(**context)
