"""`reversib report`: the indicators of every check over a period, with the incidents and the chain
heads, as JSON (for machines, signable), Markdown, or one self-contained HTML file (inline CSS and
SVG charts drawn here: no script, no external resource)."""

from __future__ import annotations

import datetime as dt
import html
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from zoneinfo import ZoneInfo

import sqlalchemy as sa

from reversib import __version__
from reversib.config import CheckConfig
from reversib.evidence.chain import read_heads
from reversib.evidence.indicators import Indicators, RunPoint, compute, generation_day
from reversib.history import History, findings_t, iso, runs_t
from reversib.model import RunState

REPORT_KIND = "reversib-report"
MAX_FINDINGS = 20  # findings shown per incident


def build_report(history: History, checks: Sequence[CheckConfig], *, since: dt.datetime, until: dt.datetime,
                 check_ids: Sequence[str] | None = None) -> dict[str, Any]:
    """The report document: one entry per check (the configured ones, or every check of the history
    when none is configured; `check_ids` restricts it), in a constant number of queries."""
    configured = {c.check_id: c for c in checks}
    r = runs_t.c
    with history.engine.connect() as conn:
        wanted = list(check_ids) if check_ids else (list(configured) or list(
            conn.execute(sa.select(r.check_id).distinct().order_by(r.check_id)).scalars()))
        points: dict[str, list[RunPoint]] = defaultdict(list)
        names: dict[str, str] = {}
        stmt = (sa.select(r.id, r.check_id, r.check_name, r.outcome, r.started_at, r.finished_at, r.files_listed,
                          r.bytes_listed, r.counts, r.generation)
                .where(r.check_id.in_(wanted), r.state != RunState.RUNNING.value,
                       r.started_at >= since, r.started_at <= until)
                .order_by(r.check_id, r.started_at, r.id))
        for row in conn.execute(stmt):
            names[row.check_id] = row.check_name
            points[row.check_id].append(RunPoint(
                row.id, row.outcome, row.started_at, row.finished_at, row.files_listed, row.bytes_listed,
                row.counts or {}, generation_day=generation_day(configured.get(row.check_id), row.generation)))
        before = dict(conn.execute(
            sa.select(r.check_id, sa.func.max(r.finished_at))
            .where(r.check_id.in_(wanted), r.outcome == "passed", r.started_at < since).group_by(r.check_id)).all())
        heads = read_heads(conn, wanted)
        restores = _restore_seconds(conn, wanted, since, until)
        coverage = _coverage(conn, wanted, since, until)
        results: dict[str, Indicators] = {}
        for check_id in wanted:
            if restores:
                points[check_id] = [replace(p, restore_seconds=restores.get(p.run_id)) for p in points[check_id]]
            c = configured.get(check_id)
            last_before = before.get(check_id)
            if isinstance(last_before, str):  # SQLite returns an aggregate's timestamp as text
                last_before = dt.datetime.fromisoformat(last_before).replace(tzinfo=dt.timezone.utc)
            results[check_id] = compute(
                check_id, points.get(check_id, []), since=since, until=until,
                deadline=c.expect.deadline_time if c else None, tz=c.tz if c else ZoneInfo("UTC"),
                last_complete_before=last_before)
        first_runs = [i.first_run_id for ind in results.values() for i in ind.incidents]
        findings: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for chunk_start in range(0, len(first_runs), 500):
            chunk = first_runs[chunk_start:chunk_start + 500]
            fstmt = (sa.select(findings_t).where(findings_t.c.run_id.in_(chunk), findings_t.c.seq < MAX_FINDINGS)
                     .order_by(findings_t.c.run_id, findings_t.c.seq))
            for f in conn.execute(fstmt).mappings():
                findings[f["run_id"]].append({k: f[k] for k in ("kind", "severity", "path", "expected", "actual")})
    out_checks = []
    for check_id in wanted:
        ind = results[check_id]
        c = configured.get(check_id)
        doc = ind.to_dict()
        for incident in doc["incident_list"]:
            incident["findings"] = findings.get(incident["first_run_id"], [])
        doc["name"] = c.name if c else names.get(check_id, check_id)
        doc["timezone"] = c.timezone if c else "UTC"
        doc["window_strip"] = "".join(_STRIP[w.status] for w in ind.windows)
        doc["run_strip"] = run_strip(points.get(check_id, []), since, until, c.tz if c else ZoneInfo("UTC"))
        doc["first_window"] = ind.windows[0].day.isoformat() if ind.windows else None
        head = heads.get(check_id)
        doc["chain_head"] = head.to_dict() if head else None
        doc["coverage"] = coverage.get(check_id)
        out_checks.append(doc)
    return {"kind": REPORT_KIND, "schema": 1, "reversib": __version__, "generated_at": iso(history._now()),
            "since": iso(since), "until": iso(until), "checks": out_checks}


_STRIP = {"on_time": "o", "missed": "m", "unmeasured": "u", "pending": "p"}


def run_strip(points: Sequence[RunPoint], since: dt.datetime, until: dt.datetime, tz: ZoneInfo) -> str:
    """One letter per day of the period (check time zone), from that day's runs: `p` its last conclusive
    run passed, `f` it failed, `e` could-not-verify runs only, `d` deferred runs only (the export was
    still being delivered), `-` no run (reversib was down, or nothing was due): reversib's own
    reliability and the gaps, day by day."""
    first, last = since.astimezone(tz).date(), until.astimezone(tz).date()
    days: dict[dt.date, str] = {}
    for p in sorted(points, key=lambda p: (p.started_at, p.run_id)):
        day = p.started_at.astimezone(tz).date()
        if p.outcome in ("passed", "failed"):
            days[day] = p.outcome[0]
        elif p.outcome == "error" and days.get(day, "d") == "d":
            days[day] = "e"
        elif p.outcome == "deferred" and day not in days:
            days[day] = "d"
    return "".join(days.get(first + dt.timedelta(days=i), "-") for i in range((last - first).days + 1))


def _restore_seconds(conn: sa.Connection, wanted: Sequence[str], since: dt.datetime,
                     until: dt.datetime) -> dict[str, float]:
    """run id -> seconds spent restoring its dumps (the sum of its `restored` findings' restore_seconds,
    docs/dumps.md), for the runs of the period that restored any."""
    from reversib.dumps.expectations import restore_detail

    r, f = runs_t.c, findings_t.c
    stmt = (sa.select(f.run_id, f.detail).join(runs_t, r.id == f.run_id)
            .where(f.kind == "restored", f.detail.is_not(None), r.check_id.in_(wanted),
                   r.started_at >= since, r.started_at <= until))
    out: dict[str, float] = {}
    for row in conn.execute(stmt):
        detail = restore_detail(row.detail)
        if detail is not None:
            out[row.run_id] = out.get(row.run_id, 0.0) + float(detail["restore_seconds"])
    return out


def _coverage(conn: sa.Connection, wanted: Sequence[str], since: dt.datetime,
              until: dt.datetime) -> dict[str, dict[str, Any]]:
    """Rolling coverage (docs/coverage.md) at the newest completed run of the period that measured it."""
    r = runs_t.c
    newest = (sa.select(r.check_id, sa.func.max(r.started_at).label("at"))
              .where(r.check_id.in_(wanted), r.coverage.is_not(None), r.state != RunState.RUNNING.value,
                     r.started_at >= since, r.started_at <= until).group_by(r.check_id).subquery())
    stmt = sa.select(r.check_id, r.id, r.finished_at, r.coverage).join(
        newest, sa.and_(r.check_id == newest.c.check_id, r.started_at == newest.c.at))
    out: dict[str, dict[str, Any]] = {}
    for row in conn.execute(stmt):
        cov = row.coverage
        if not cov:  # no rolling coverage configured (every run verifies every entry): nothing to show
            continue
        out[row.check_id] = {"run_id": row.id, "at": iso(row.finished_at),
                             **{k: cov.get(k) for k in ("ratio", "period_seconds", "entries", "bytes",
                                                        "covered_files", "covered_bytes", "oldest_verified_at")}}
    return out


def coverage_text(c: dict[str, Any]) -> str:
    cov = c.get("coverage")
    if not cov:
        return "Rolling coverage: not configured (every run verifies every entry) or not measured in the period."
    return (f"Rolling coverage: {_pct(cov['ratio'])} of {_size(cov['bytes'] or 0)} ({cov['covered_files']} of "
            f"{cov['entries']} entries) verified within {_dur(cov['period_seconds'])}, at run {cov['run_id']} "
            f"({cov['at']}).")


# ------------------------------------------------------------------------------------------- text


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{v * 100:.1f}%"


def _dur(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    s = round(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m = s // 60
    return f"{d}d {h}h" if d else f"{h}h {m:02d}m" if h else f"{m}m"


def _size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _summary_row(c: dict[str, Any]) -> list[str]:
    w = c["windows"]
    return [c["name"], _pct(c["on_time_ratio"]), f"{w['on_time']}/{w['on_time'] + w['missed']}", str(w["unmeasured"]),
            _dur(c["since_last_complete_seconds"]), _dur(c["longest_gap_seconds"]), _dur(c["mttr_seconds"]),
            str(c["open_incidents"]), _pct(c["could_not_verify_ratio"]), str(c["sudden_shrinkages"]),
            _secs(c["restore_seconds_last"]) + (f" ({_trend(c['restore_trend_seconds_per_30d'])})"
                                                if c["restore_trend_seconds_per_30d"] is not None else "")]


def _secs(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.1f} s" if v < 600 else _dur(v)


def _trend(v: float) -> str:
    return f"{'+' if v >= 0 else '−'}{abs(v):.1f} s/30d"


def restore_text(c: dict[str, Any]) -> str:
    if not c["restores"]:
        return "Restore duration (RTO): no restore test in the period."
    trend = c["restore_trend_seconds_per_30d"]
    return (f"Restore duration (RTO) over {c['restores']} restore tests: last {_secs(c['restore_seconds_last'])}, "
            f"mean {_secs(c['restore_seconds_mean'])}, longest {_secs(c['restore_seconds_max'])}, trend "
            + ("n/a (one test)" if trend is None else _trend(trend)) + ".")


HEADERS = ["check", "on time & complete", "windows met", "unmeasured", "since last complete export",
           "longest gap", "MTTR", "open incidents", "could not verify", "sudden shrinkages", "restore (RTO), trend"]


def render_markdown(doc: dict[str, Any]) -> str:
    def esc(s: str) -> str:
        return s.replace("|", "\\|").replace("\n", " ")

    lines = [f"# Reversibility report, {doc['since'][:10]} to {doc['until'][:10]}", "",
             f"Generated {doc['generated_at']} by reversib {doc['reversib']}.", "",
             "| " + " | ".join(HEADERS) + " |", "|" + "---|" * len(HEADERS)]
    lines += ["| " + " | ".join(esc(x) for x in _summary_row(c)) + " |" for c in doc["checks"]]
    for c in doc["checks"]:
        lines += ["", f"## {esc(c['name'])} (`{c['check_id']}`)", "",
                  f"Deadline {c['deadline'] or 'none (no delivery windows)'} {c['timezone']}; "
                  f"{c['runs']} runs: " + ", ".join(f"{k} {v}" for k, v in c["outcomes"].items()) + ".", ""]
        if c["incident_list"]:
            lines += ["| incident start | end | duration | failed runs | first findings |", "|---|---|---|---|---|"]
            for i in c["incident_list"]:
                kinds = ", ".join(f"{f['kind']} {f['path'] or ''}".strip() for f in i["findings"][:5])
                lines.append(f"| {i['started_at']} | {'**open**' if i['open'] else i['ended_at']} | "
                             f"{_dur(i['duration_seconds'])} | {i['failed_runs']} | {esc(kinds)} |")
        else:
            lines.append("No incident in the period.")
        notes = [f"- unmeasured {w['day']}: {w['reason']}" for w in c["unmeasured_windows"]]
        notes += [f"- sudden shrinkage at {t}: {f} files, {_size(b)}"
                  for t, f, b in ((g["at"], g["files"], g["bytes"]) for g in c["growth"] if g["sudden_shrinkage"])]
        if notes:  # a list right after a table would be read as part of it
            lines += ["", *notes]
        head = c["chain_head"]
        lines += ["", coverage_text(c)]
        lines += ["", restore_text(c)]
        lines += ["", f"Chain head: link {head['seq']}, run `{head['run_id']}`, `{head['record_digest']}`" if head
                  else "Chain head: none"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- html

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2430;margin:24px auto;
max-width:1100px;padding:0 16px;background:#fff}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-top:1px solid #d8dee8;padding-top:14px}
h3{font-size:14px;margin:14px 0 4px;color:#46505f}
.meta{color:#5b6574;margin:0 0 14px}table{border-collapse:collapse;width:100%;margin:6px 0}
th,td{border-bottom:1px solid #e3e7ee;padding:4px 6px;text-align:left;vertical-align:top}
th{background:#f3f5f8;font-weight:600;font-size:12px}td.n{text-align:right;font-variant-numeric:tabular-nums}
.good{color:#17803d;font-weight:600}.bad{color:#b42318;font-weight:600}.warn{color:#a15c07;font-weight:600}
.open{background:#fde8e7}.legend span{display:inline-block;margin-right:12px;font-size:12px}
.sw{display:inline-block;width:10px;height:10px;margin-right:4px;vertical-align:-1px}
code{font-size:12px;word-break:break-all}svg{display:block;margin:4px 0}
"""

COLORS = {"o": "#2e9e5b", "m": "#d64545", "u": "#b8bec8", "p": "#e8ebf0"}
RUN_COLORS = {"p": "#2e9e5b", "f": "#d64545", "e": "#e0a030", "d": "#9cc3e6", "-": "#e8ebf0"}


def _e(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _ratio_class(v: float | None) -> str:
    return "" if v is None else "good" if v >= 0.95 else "warn" if v >= 0.8 else "bad"


def _strip_svg(strip: str, first_day: str | None, colors: dict[str, str] = COLORS, unit: str = "windows") -> str:
    if not strip:
        return "<p>No delivery windows (the check has no <code>expect.deadline</code>).</p>"
    cell = max(2.0, min(12.0, 1000.0 / len(strip)))
    width = cell * len(strip)
    rects = "".join(f'<rect x="{i * cell:.2f}" y="0" width="{max(cell - 0.6, 1):.2f}" height="22" '
                    f'fill="{colors[s]}"/>' for i, s in enumerate(strip))
    return (f'<svg width="{width:.0f}" height="36" viewBox="0 0 {width:.0f} 36" role="img" '
            f'aria-label="{unit} from {_e(first_day)}">{rects}'
            f'<text x="0" y="34" font-size="10" fill="#5b6574">{_e(first_day)}</text>'
            f'<text x="{width:.0f}" y="34" font-size="10" fill="#5b6574" text-anchor="end">'
            f'{len(strip)} {unit}</text></svg>')


def _line_svg(points: list[tuple[float, float, bool]], label: str, fmt: Any) -> str:
    """A line chart of (t, value, flagged) with flagged points circled in red."""
    if not points:
        return f"<p>No {label} measured in the period.</p>"
    w, h, pad = 1000.0, 120.0, 28.0
    t0, t1 = points[0][0], points[-1][0]
    vmax = max(p[1] for p in points) or 1.0

    def xy(t: float, v: float) -> tuple[float, float]:
        x = pad + (w - 2 * pad) * ((t - t0) / (t1 - t0) if t1 > t0 else 0.5)
        return x, h - 16 - (h - 30) * (v / vmax)

    path = " ".join(("M" if i == 0 else "L") + "{:.1f},{:.1f}".format(*xy(t, v)) for i, (t, v, _) in enumerate(points))
    marks = "".join('<circle cx="{:.1f}" cy="{:.1f}" r="4" fill="none" stroke="#d64545" stroke-width="2"/>'.format(
        *xy(t, v)) for t, v, f in points if f)
    return (f'<svg width="100%" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" preserveAspectRatio="none" '
            f'role="img" aria-label="{_e(label)}"><line x1="{pad}" y1="{h - 16}" x2="{w - pad}" y2="{h - 16}" '
            f'stroke="#c9ced6"/><path d="{path}" fill="none" stroke="#2f6fd6" stroke-width="1.5"/>{marks}'
            f'<text x="{pad}" y="11" font-size="10" fill="#5b6574">{_e(label)} (max {_e(fmt(vmax))})</text></svg>')


def _incidents_svg(c: dict[str, Any]) -> str:
    incidents = c["incident_list"]
    if not incidents:
        return ""
    t0 = dt.datetime.fromisoformat(c["since"]).timestamp()
    t1 = dt.datetime.fromisoformat(c["until"]).timestamp()
    w, h = 1000.0, 26.0
    span = max(t1 - t0, 1.0)
    bars = []
    for i in incidents:
        s = dt.datetime.fromisoformat(i["started_at"]).timestamp()
        e = s + i["duration_seconds"]
        x = w * (s - t0) / span
        bars.append(f'<rect x="{x:.1f}" y="4" width="{max(w * (e - s) / span, 2):.1f}" height="16" '
                    f'fill="{"#d64545" if i["open"] else "#f0a3a3"}"><title>{_e(i["started_at"])} '
                    f'{_e(_dur(i["duration_seconds"]))}</title></rect>')
    return (f'<svg width="100%" height="{h:.0f}" viewBox="0 0 {w:.0f} {h:.0f}" preserveAspectRatio="none" '
            f'role="img" aria-label="incidents"><rect x="0" y="11" width="{w:.0f}" height="2" fill="#e3e7ee"/>'
            f'{"".join(bars)}</svg>')


def render_html(doc: dict[str, Any]) -> str:
    out = [f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Reversibility report "
           f"{_e(doc['since'][:10])} to {_e(doc['until'][:10])}</title>"
           "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'\">"
           f"<style>{CSS}</style></head><body>",
           f"<h1>Reversibility report</h1><p class=\"meta\">{_e(doc['since'][:10])} to {_e(doc['until'][:10])} · "
           f"generated {_e(doc['generated_at'])} by reversib {_e(doc['reversib'])} · {len(doc['checks'])} checks</p>",
           "<h2>Summary</h2><table><tr>" + "".join(f"<th>{_e(x)}</th>" for x in HEADERS) + "</tr>"]
    for c in doc["checks"]:
        row = _summary_row(c)
        cls = _ratio_class(c["on_time_ratio"])
        out.append(f"<tr><td><a href=\"#c-{_e(c['check_id'])}\">{_e(row[0])}</a></td>"
                   f"<td class=\"n {cls}\">{_e(row[1])}</td>"
                   + "".join(f"<td class=\"n{' bad' if i == 7 and c['open_incidents'] else ''}\">{_e(x)}</td>"
                             for i, x in enumerate(row[2:], start=2)) + "</tr>")
    out.append("</table><p class=\"legend\">" + "".join(
        f"<span><i class=\"sw\" style=\"background:{COLORS[k]}\"></i>{_e(n)}</span>"
        for k, n in (("o", "on time and complete"), ("m", "missed: late or incomplete"),
                     ("u", "unmeasured: reversib down or could not verify"), ("p", "pending"))) + "</p>")
    for c in doc["checks"]:
        out.append(f"<h2 id=\"c-{_e(c['check_id'])}\">{_e(c['name'])} <code>{_e(c['check_id'])}</code></h2>"
                   f"<p class=\"meta\">deadline {_e(c['deadline'] or 'none')} {_e(c['timezone'])} · {c['runs']} runs: "
                   + _e(", ".join(f"{k} {v}" for k, v in c["outcomes"].items())) + "</p>")
        out.append(f"<h3>Delivery windows: {_e(_pct(c['on_time_ratio']))} on time and complete</h3>")
        out.append(_strip_svg(c["window_strip"], c["first_window"]))
        out.append(f"<h3>Runs by day: could not verify {_e(_pct(c['could_not_verify_ratio']))} of runs "
                   f"(reversib's own reliability); {_e(_dur(c['since_last_complete_seconds']))} since the last "
                   "complete export</h3>")
        out.append(_strip_svg(c["run_strip"], c["since"][:10], RUN_COLORS, "days"))
        out.append("<p class=\"legend\">" + "".join(
            f"<span><i class=\"sw\" style=\"background:{RUN_COLORS[k]}\"></i>{_e(n)}</span>"
            for k, n in (("p", "passed"), ("f", "failed"), ("e", "could not verify"),
                         ("d", "deferred: still being delivered"), ("-", "no run"))) + "</p>")
        growth = c["growth"]
        times = [dt.datetime.fromisoformat(g["at"]).timestamp() for g in growth]
        out.append(f"<h3>Export growth ({len([g for g in growth if g['sudden_shrinkage']])} sudden shrinkages)</h3>")
        out.append(_line_svg([(t, float(g["bytes"]), g["sudden_shrinkage"]) for t, g in zip(times, growth,
                                                                                            strict=True)],
                             "bytes", _size))
        out.append(_line_svg([(t, float(g["files"]), g["sudden_shrinkage"]) for t, g in zip(times, growth,
                                                                                            strict=True)],
                             "files", lambda v: f"{v:.0f}"))
        out.append(f"<h3>Incidents ({len(c['incident_list'])}; MTTR {_e(_dur(c['mttr_seconds']))}; longest gap "
                   f"without a complete export {_e(_dur(c['longest_gap_seconds']))})</h3>")
        out.append(_incidents_svg(c))
        if c["incident_list"]:
            out.append("<table><tr><th>start</th><th>end</th><th>duration</th><th>failed runs</th>"
                       "<th>findings of the first failed run</th></tr>")
            for i in c["incident_list"]:
                fs = "<br>".join(f"{_e(f['kind'])} <code>{_e(f['path'])}</code>" for f in i["findings"][:5])
                out.append(f"<tr class=\"{'open' if i['open'] else ''}\"><td>{_e(i['started_at'])}</td>"
                           f"<td>{'<b>open</b>' if i['open'] else _e(i['ended_at'])}</td>"
                           f"<td class=\"n\">{_e(_dur(i['duration_seconds']))}</td>"
                           f"<td class=\"n\">{i['failed_runs']}</td><td>{fs}</td></tr>")
            out.append("</table>")
        if c["unmeasured_windows"]:
            out.append("<p>Unmeasured windows: " + _e(", ".join(f"{w['day']} ({w['reason']})"
                                                                 for w in c["unmeasured_windows"])) + "</p>")
        head = c["chain_head"]
        out.append(f"<p>{_e(coverage_text(c))}</p>")
        out.append(f"<h3>{_e(restore_text(c))}</h3>")
        if c["restore_series"]:
            out.append(_line_svg([(dt.datetime.fromisoformat(p["at"]).timestamp(), p["seconds"], False)
                                  for p in c["restore_series"]], "restore seconds", _secs))
        out.append("<p>Chain head: " + (f"link {head['seq']}, run <code>{_e(head['run_id'])}</code>, record digest "
                                       f"<code>{_e(head['record_digest'])}</code>" if head else "none") + "</p>")
    out.append("</body></html>\n")
    return "".join(out)
