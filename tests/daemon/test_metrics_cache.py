"""/metrics reads again on every scrape only what changed in the history, and formats again only the
checks whose summary changed -- yet every scrape shows what any process wrote: a run completed or
started by another History (another process), a skipped slot, pruning.  Each scrape is compared with
the rendering of a fresh collector over a fresh History (no cache at all).  SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from reversib import metrics
from reversib.evidence.prune import prune
from reversib.history import History, to_datetime
from reversib.metrics import HistoryCollector, ScheduledCheck
from reversib.runner import run_check

from .test_daemon import settings_for


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.service)])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'history.db'}"
    return str(request.getfixturevalue("pg_database"))


class Counting:
    """Counts the checks whose lines are formatted (reversib.metrics._check_samples)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.checks: list[str] = []
        real = metrics._check_samples

        def counted(c: ScheduledCheck, s: Any) -> Any:
            self.checks.append(c.check.check_id)
            return real(c, s)

        monkeypatch.setattr(metrics, "_check_samples", counted)

    def take(self) -> list[str]:
        got, self.checks = self.checks, []
        return got


@pytest.fixture
def scraped(tmp_path: Path, url: str) -> Iterator[tuple[HistoryCollector, list[ScheduledCheck], str]]:
    settings = settings_for(tmp_path, {"a": {"schedule": {"every": "1h"}}, "b": {"labels": {"customer": "acme"}},
                                       "bad": {"source": {"url": "../nowhere"}}})
    checks = [ScheduledCheck.of(c, 0) for c in settings.checks]
    with History.open(url) as history:
        yield HistoryCollector(history, lambda: checks), checks, url


def fresh(url: str, checks: list[ScheduledCheck]) -> bytes:
    with History.open(url) as other:
        return HistoryCollector(other, lambda: checks).render()


def test_each_scrape_shows_what_another_process_wrote(scraped: tuple[HistoryCollector, list[ScheduledCheck], str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    collector, checks, url = scraped
    by_id = {c.check.check_id: c.check for c in checks}
    counting = Counting(monkeypatch)

    def scrape() -> tuple[str, list[str]]:
        """This collector's scrape, the checks it formatted; checked equal to a fresh collector's."""
        text = collector.render()
        formatted = counting.take()
        assert text == fresh(url, checks)
        counting.take()
        return text.decode(), formatted

    first, formatted = scrape()
    assert formatted == ["a", "b", "bad"]
    assert scrape() == (first, [])  # nothing changed: nothing formatted again

    with History.open(url, host="cli-host", pid=1) as other:  # `verify-now` from another process
        assert run_check(by_id["a"], other).finished_at
    text, formatted = scrape()
    assert formatted == ["a"]
    assert 'reversib_check_outcome{check="a",outcome="passed"} 1.0' in text
    assert 'reversib_check_runs_total{check="a"} 1.0' in text
    assert 'reversib_check_last_run_timestamp_seconds{check="a"} 0.0' not in text

    with History.open(url, host="cli-host", pid=1) as other:  # started there, still running
        running = other.start_run(check_id="b", check_name="b", trigger="cli")
        text, formatted = scrape()
        assert formatted == ["b"] and 'reversib_check_running{check="b",customer="acme"} 1.0' in text
        assert other.record_skipped("b", 1_700_000_000.0, "overlap")
        text, formatted = scrape()
        assert formatted == ["b"] and 'reversib_check_skipped_slots_total{check="b",customer="acme"} 1.0' in text
        assert other.mark_interrupted(running, "stopped")
        run_check(by_id["bad"], other)
    text, formatted = scrape()
    assert sorted(formatted) == ["b", "bad"]
    assert 'reversib_check_outcome{check="b",customer="acme",outcome="error"} 1.0' in text
    assert 'reversib_check_running{check="b",customer="acme"} 0.0' in text
    assert 'reversib_check_errors_total{check="bad"} 1.0' in text
    assert scrape() == (text, [])


def test_pruning_by_another_process_shows_in_the_next_scrape(
        scraped: tuple[HistoryCollector, list[ScheduledCheck], str]) -> None:
    """Pruning deletes runs without changing the counters (nor any count the cache could compare): the
    checkpoint it leaves in the chain makes every check be read again."""
    collector, checks, url = scraped
    check = next(c.check for c in checks if c.check.check_id == "a")
    passed = run_check(check, collector.history)
    text = collector.render().decode()
    assert 'reversib_check_last_success_timestamp_seconds{check="a"} 0.0' not in text
    assert 'reversib_check_last_success_timestamp_seconds{check="a"} ' in text
    with History.open(url, host="cli-host", pid=1) as other:  # `reversib history prune` in another process
        assert [p.runs for p in prune(other, Ed25519PrivateKey.generate(),
                                      to_datetime(float(passed.finished_at) + 1))] == [1]
    after = collector.render()
    text = after.decode()
    assert 'reversib_check_last_success_timestamp_seconds{check="a"} 0.0' in text
    assert 'reversib_check_last_run_timestamp_seconds{check="a"} 0.0' in text
    assert 'reversib_check_runs_total{check="a"} 1.0' in text  # a counter: pruning does not lower it
    assert after == fresh(url, checks)


def test_a_reload_with_other_labels_formats_the_check_again(
        scraped: tuple[HistoryCollector, list[ScheduledCheck], str], tmp_path: Path) -> None:
    collector, checks, url = scraped
    collector.render()
    relabelled = settings_for(tmp_path, {"a": {"labels": {"customer": "new"}, "schedule": {"every": "2h"}}})
    checks[:] = [ScheduledCheck.of(c, 0) for c in relabelled.checks]
    text = collector.render().decode()
    assert 'reversib_check_expected_interval_seconds{check="a",customer="new"} 7200.0' in text
    assert 'check="b"' not in text and 'reversib_checks_configured 1.0' in text
    assert collector.render() == fresh(url, checks)


def test_no_check_configured_still_lists_every_family(tmp_path: Path) -> None:
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from reversib.metrics import make_registry

    def families(text: bytes) -> list[tuple[str, str, int]]:
        return [(f.name, f.type, len(f.samples)) for f in text_string_to_metric_families(text.decode())]

    with History.open(f"sqlite:///{tmp_path / 'h.db'}") as history:
        collector = HistoryCollector(history, list)
        text = collector.render()
        assert families(text) == families(generate_latest(make_registry(collector)))
    for name, _, kind in metrics.CHECK_FAMILIES:
        assert f"# TYPE {name}{'_total' if kind == 'counter' else ''} {kind}\n".encode() in text
