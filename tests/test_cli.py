"""Admin commands: check-config, refusing to start, KB search, tickets, customers."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from config.settings import DEFAULTS_DIR

Cli = Callable[..., subprocess.CompletedProcess[str]]


@pytest.fixture
def cli(tmp_path: Path, process_env: dict[str, str]) -> Cli:
    """Runs ``firstline ARGS`` in ``tmp_path`` on the test's database."""

    def run(*args: str, stdin: str = "", env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "bot.cli", *args], input=stdin, text=True,
                              capture_output=True, timeout=120, env={**process_env, **(env or {})},
                              cwd=tmp_path, check=False)

    return run


def _broken_content(tmp_path: Path) -> Path:
    content = tmp_path / "content"
    shutil.copytree(DEFAULTS_DIR, content, ignore=shutil.ignore_patterns("kb"))
    cats = content / "categories.yaml"
    text = cats.read_text(encoding="utf-8")
    # Break a checklist branch target and the SLA file's default tier.
    text = text.replace("\n            goto: check_spam", "\n            goto: no_such_step", 1)
    cats.write_text(text, encoding="utf-8")
    sla = content / "sla.yaml"
    sla.write_text(sla.read_text(encoding="utf-8").replace("default_tier: free",
                                                           "default_tier: gold"), encoding="utf-8")
    return content


def test_check_config_ok_on_defaults(cli: Cli) -> None:
    out = cli("check-config")
    assert out.returncode == 0, out.stderr
    assert "OK: 7 categories" in out.stdout and "KB articles" in out.stdout


def test_check_config_and_run_report_every_problem_with_file_line_key(
    tmp_path: Path, cli: Cli
) -> None:
    content = _broken_content(tmp_path)
    env = {"FIRSTLINE_CONTENT_DIR": str(content)}
    out = cli("check-config", env=env)
    assert out.returncode == 2
    lines = [ln.strip() for ln in out.stderr.splitlines() if "yaml:" in ln]
    assert any("categories.yaml:" in ln and "no_such_step" in ln and "goto" in ln
               for ln in lines), out.stderr
    assert any("sla.yaml:" in ln and "[default_tier]" in ln for ln in lines), out.stderr
    # The bot refuses to start with the same messages.
    run = cli("chat", env=env)
    assert run.returncode == 2
    assert "refuses to start" in run.stderr
    assert set(lines) <= {ln.strip() for ln in run.stderr.splitlines()}


def test_kb_search_json_over_a_custom_kb_folder(tmp_path: Path, cli: Cli) -> None:
    kb = tmp_path / "kb"
    kb.mkdir()
    (kb / "a.md").write_text(
        "---\nid: refund\ntitle: Refunds\ncategory: billing\nlang: en\nquestions:\n"
        "  - how do I get a refund\n  - I want my money back\n  - refund my payment\n---\n"
        "Refunds take 5 days.\n", encoding="utf-8")
    (kb / "b.md").write_text(
        "---\nid: vpn\ntitle: VPN\ncategory: network\nlang: en\nquestions:\n"
        "  - vpn does not connect\n  - cannot connect to the vpn\n  - vpn connection fails\n"
        "---\nReinstall the profile.\n", encoding="utf-8")
    out = cli("kb", "search", "--json",
               stdin="I want a refund please\nvpn wont connect\n",
               env={"FIRSTLINE_KB_DIR": str(kb)})
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert [r["query"] for r in rows] == ["I want a refund please", "vpn wont connect"]
    assert rows[0]["results"][0]["id"] == "refund" and rows[1]["results"][0]["id"] == "vpn"
    assert all(r["decision"] in ("answer", "suggest", "none") for r in rows)
    assert all(set(x) == {"id", "score"} for r in rows for x in r["results"])


def test_customers_import_csv_and_tickets_json(tmp_path: Path, cli: Cli) -> None:
    csv_file = tmp_path / "dir.csv"
    csv_file.write_text("platform,user_id,organisation,tier\nconsole,ann,Acme,enterprise\n"
                        "console,bob,Acme,platinum\n", encoding="utf-8")
    bad = cli("customers", "import", str(csv_file))
    assert bad.returncode == 2 and f"{csv_file}:3 [tier]" in bad.stderr
    csv_file.write_text("platform,user_id,organisation,tier\nconsole,ann,Acme,enterprise\n",
                        encoding="utf-8")
    ok = cli("customers", "import", str(csv_file))
    assert ok.returncode == 0 and "imported 1" in ok.stdout
    script = "/new\n3\n1\n"  # Servers category, step 1 "Fixed it"... then a real ticket:
    cli("chat", "--user", "ann", stdin=script)
    tickets = json.loads(cli("tickets", "--json", "--all").stdout)
    assert tickets == []  # solved by the checklist: no ticket
    empty = cli("tickets")
    assert "no open tickets" in empty.stdout


def test_report_agrees_with_tickets_after_console_sessions(cli: Cli) -> None:
    from tests.test_console import _account, _unsolved_path

    escalate = ["I forgot my password", "2", *_unsolved_path(_account()), "details", "1", "2"]
    solved = cli("chat", "--user", "cat", stdin="I forgot my password\n1\n")
    assert "glad" in solved.stdout
    for user in ("ann", "bob"):
        out = cli("chat", "--user", user, stdin="\n".join(escalate) + "\n")
        assert "is created" in out.stdout, out.stdout
    l2 = cli("chat", "--as", "l2", "--name", "eve",
              stdin="reply FL-1001 Fixed it for you\nresolve FL-1001\n")
    assert l2.returncode == 0
    tickets = json.loads(cli("tickets", "--all", "--json").stdout)
    from datetime import UTC, datetime

    # "Now" as a moment: a date would be read in the report's time zone (Moscow), where
    # late in the UTC evening it is already tomorrow.
    today = datetime.now(UTC).isoformat()
    rep = cli("report", "--since", "2000-01-01", "--until", today, "--format", "json")
    assert rep.returncode == 0, rep.stderr
    data = json.loads(rep.stdout)
    volume = data["volume"]
    assert volume["escalated"] == len(tickets) == 2
    assert volume["resolved_l2"] == sum(t["status"] == "resolved" for t in tickets) == 1
    assert volume["backlog"] == sum(t["status"] == "open" for t in tickets) == 1
    assert volume["solved_kb"] == 1
    text = cli("report", "--since", "2000-01-01", "--until", today)
    assert "escalated: 2" in text.stdout
    csv_out = cli("report", "--since", "2000-01-01", "--until", today,
                   "--format", "csv")
    assert csv_out.stdout.splitlines()[0].startswith("section")


def test_retention_command(cli: Cli) -> None:
    out = cli("retention", "--older-than", "365d")
    assert out.returncode == 0, out.stderr
    assert "processed_events: 0" in out.stdout or "nothing to do" in out.stdout
    bad = cli("retention", "--older-than", "soon")
    assert bad.returncode == 2 and "not a duration" in bad.stderr
