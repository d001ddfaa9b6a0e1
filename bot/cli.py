"""The ``firstline`` command line: run the bot, chat locally, and admin tools."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from sqlalchemy import select

from bot.app import App
from bot.content import load_content
from bot.inbox import MAX_REPLAYS
from bot.logs import setup_logging
from bot.storage.db import Database
from bot.storage.models import Ticket, TicketPause
from config.problems import ContentError, Problem
from config.settings import Settings, load_settings

T = TypeVar("T")

app = typer.Typer(
    name="firstline",
    help="firstline — first-line support bot for Telegram and Slack.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database maintenance.", no_args_is_help=True)
tickets_app = typer.Typer(help="Tickets: list and show.", invoke_without_command=True)
sla_app = typer.Typer(help="SLA tools.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(tickets_app, name="tickets")
app.add_typer(sla_app, name="sla")
kb_app = typer.Typer(help="Knowledge base: check, search, gaps, drafts.", no_args_is_help=True)
drafts_app = typer.Typer(help="KB drafts saved by L2.", invoke_without_command=True)
customers_app = typer.Typer(help="The customer directory.", no_args_is_help=True)
app.add_typer(kb_app, name="kb")
kb_app.add_typer(drafts_app, name="drafts")
app.add_typer(customers_app, name="customers")

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML settings file (or FIRSTLINE_CONFIG).", show_default=False
    ),
]


class State:
    """Options shared by every command."""

    config: Path | None = None


STATE = State()


@app.callback(invoke_without_command=True)
def main_callback(ctx: typer.Context, config: ConfigOpt = None) -> None:
    """Without a command: run the bot (same as `firstline run`)."""
    STATE.config = config
    if ctx.invoked_subcommand is None:
        run()


def fail(problems: list[Problem], header: str = "Configuration problems:") -> None:
    """Print problems for the admin and exit with status 2."""
    typer.echo(header, err=True)
    for p in problems:
        typer.echo(f"  {p}", err=True)
    raise typer.Exit(2)


def settings_or_exit() -> Settings:
    """Load settings, or print every problem with file, line and key and exit."""
    try:
        return load_settings(STATE.config)
    except ContentError as exc:
        fail(exc.problems)
        raise  # unreachable: fail() exits


def with_app(fn: Callable[[App], Awaitable[T]], *, log: bool = False) -> T:
    """Build the application, run ``fn`` with it, and close it."""
    settings = settings_or_exit()
    if log:
        setup_logging(settings)

    async def go() -> T:
        try:
            application = await App.create(settings)
        except ContentError as exc:
            fail(exc.problems, "The bot refuses to start; fix these first:")
            raise
        try:
            return await fn(application)
        finally:
            await application.close()

    return asyncio.run(go())


# ---------------------------------------------------------------------- run and chat


@app.command()
def run(config: ConfigOpt = None) -> None:
    """Run the bot: Telegram and/or Slack when tokens are set, else the local console."""
    if config is not None:
        STATE.config = config
    settings = settings_or_exit()
    has_platform = settings.telegram.bot_token is not None or settings.slack.bot_token is not None
    if not has_platform:
        typer.echo(
            "No TELEGRAM_BOT_TOKEN or SLACK_BOT_TOKEN set: starting the local console "
            "channel (see README).",
            err=True,
        )
        chat(as_="user", user=None, name=None, lang=None)
        return
    from handlers.server import serve

    setup_logging(settings)
    try:
        asyncio.run(serve(settings))
    except ContentError as exc:
        fail(exc.problems, "The bot refuses to start; fix these first:")
    except KeyboardInterrupt:
        pass


@app.command()
def chat(
    as_: Annotated[str, typer.Option("--as", help="user (end user) or l2 (consultant).")] = "user",
    user: Annotated[str | None, typer.Option(help="End-user id (default: your login).")] = None,
    name: Annotated[str | None, typer.Option(help="Consultant name for --as l2.")] = None,
    lang: Annotated[str | None, typer.Option(help="Language code of the end user (en/ru).")] = None,
) -> None:
    """Chat with the bot in the terminal, as an end user or as an L2 consultant.

    With stdin from a pipe it reads one message per line; a line that is only a number
    presses that button.
    """
    from handlers.console import ConsoleAgent, ConsoleUser, default_user

    if as_ not in ("user", "l2"):
        typer.echo("--as must be 'user' or 'l2'", err=True)
        raise typer.Exit(2)

    async def go(application: App) -> None:
        if as_ == "l2":
            await ConsoleAgent(application, name or default_user()).run()
        else:
            await ConsoleUser(application, user or default_user(), lang).run()

    with_app(go)


# ---------------------------------------------------------------------- config and db


@app.command("check-config")
def check_config() -> None:
    """Validate settings and every content file; print each problem with file, line, key."""
    settings = settings_or_exit()
    content, problems = load_content(settings)
    kb_count = 0
    if content is not None:
        from bot.app import build_kb

        kb = build_kb(settings, content)
        problems = problems + list(kb.problems)
        kb_count = len(kb.articles)
    if problems:
        fail(problems)
    assert content is not None
    typer.echo(
        f"OK: {len(content.categories)} categories, {len(content.sla.tiers)} tiers, "
        f"{len(content.sla.calendars)} calendars, {kb_count} KB articles, "
        f"{len(content.customers.entries)} directory entries."
    )


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply database migrations (also done at every start)."""
    settings = settings_or_exit()

    async def go() -> None:
        db = Database(settings.database.url)
        try:
            await db.upgrade()
        finally:
            await db.dispose()

    asyncio.run(go())
    typer.echo("database is up to date")


# ---------------------------------------------------------------------- tickets


def _ticket_json(app_: App, tk: Ticket) -> dict[str, Any]:
    def iso(d: datetime | None) -> str | None:
        return d.isoformat() if d else None

    return {
        "number": app_.desk.number(tk),
        "status": tk.status,
        "level": tk.level,
        "priority": tk.priority,
        "tier": tk.tier,
        "organisation": tk.organisation,
        "category": tk.category,
        "subject": tk.subject,
        "owner": tk.owner_name,
        "destination": tk.destination,
        "created_at": iso(tk.created_at),
        "first_response_at": iso(tk.first_response_at),
        "resolved_at": iso(tk.resolved_at),
        "first_response_due": iso(tk.first_response_due),
        "next_response_due": iso(tk.next_response_due),
        "resolution_due": iso(tk.resolution_due),
        "l3_due": iso(tk.l3_due),
        "csat": tk.csat,
        "reopen_count": tk.reopen_count,
    }


@tickets_app.callback()
def tickets_list(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON array.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Include resolved and closed.")] = False,
) -> None:
    """List open tickets with status, owner, deadlines and SLA state."""
    if ctx.invoked_subcommand is not None:
        return
    from escalation.card import build_card
    from escalation.desk import OPEN_STATUSES

    async def go(a: App) -> None:
        async with a.db.read() as s:
            stmt = select(Ticket).order_by(Ticket.id)
            if not all_:
                stmt = stmt.where(Ticket.status.in_(OPEN_STATUSES))
            rows = list((await s.execute(stmt)).scalars())
            if as_json:
                out = []
                for tk in rows:
                    d = _ticket_json(a, tk)
                    card = await build_card(s, a.desk, tk, a.clock.now())
                    d["sla"] = {x.name: x.state for x in card.deadlines}
                    out.append(d)
                typer.echo(json.dumps(out, ensure_ascii=False, indent=2))
                return
            if not rows:
                typer.echo("no tickets" if all_ else "no open tickets")
                return
            typer.echo(
                f"{'TICKET':<9} {'STATUS':<12} {'PRIO':<8} {'TIER':<10} {'OWNER':<14} SLA / SUBJECT"
            )
            for tk in rows:
                card = await build_card(s, a.desk, tk, a.clock.now())
                sla = "; ".join(f"{x.label} {x.state}" for x in card.deadlines) or "-"
                typer.echo(
                    f"{card.number:<9} {tk.status:<12} {tk.priority:<8} {tk.tier:<10} "
                    f"{(tk.owner_name or '-')[:14]:<14} {sla}\n{'':<9} {tk.subject[:70]}"
                )

    with_app(go)


@tickets_app.command("show")
def tickets_show(
    number: str,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """Show one ticket's card and history."""
    from escalation.card import build_card, render_plain

    async def go(a: App) -> None:
        async with a.db.read() as s:
            tk = await a.desk.by_number(s, number)
            if tk is None:
                typer.echo(f"no ticket {number}", err=True)
                raise typer.Exit(1)
            if as_json:
                typer.echo(json.dumps(_ticket_json(a, tk), ensure_ascii=False, indent=2))
                return
            typer.echo(render_plain(await build_card(s, a.desk, tk, a.clock.now())))

    with_app(go)


# ---------------------------------------------------------------------- SLA


@sla_app.command("explain")
def sla_explain(number: str) -> None:
    """Explain how each deadline of a ticket was computed (calendar, holidays, pauses)."""
    from escalation.calendar import format_duration

    async def go(a: App) -> None:
        async with a.db.read() as s:
            tk = await a.desk.by_number(s, number)
            if tk is None:
                typer.echo(f"no ticket {number}", err=True)
                raise typer.Exit(1)
            pauses = [
                (p.started_at, p.ended_at)
                for p in (
                    await s.execute(
                        select(TicketPause)
                        .where(TicketPause.ticket_id == tk.id)
                        .order_by(TicketPause.id)
                    )
                ).scalars()
            ]
        sla = a.content.sla
        cal = sla.calendar_for(tk.tier)
        targets = sla.targets_for(tk.tier, tk.priority)
        typer.echo(
            f"{a.desk.number(tk)}: tier {tk.tier}, priority {tk.priority}, status {tk.status}"
        )
        typer.echo(f"calendar: {cal.summary()}")
        for p in pauses:
            end = p[1].isoformat() if p[1] else "now (open)"
            typer.echo(f"pause (waiting for customer): {p[0].isoformat()} -> {end}")
        clocks: list[tuple[str, datetime | None, Any]] = [
            ("first response", tk.created_at, targets.first_response),
            ("resolution", tk.created_at, targets.resolution),
        ]
        if tk.awaiting_reply_since is not None and tk.first_response_at is not None:
            clocks.insert(1, ("next response", tk.awaiting_reply_since, targets.next_response))
        for label, start, target in clocks:
            if start is None:
                continue
            typer.echo(
                f"\n{label}: target {format_duration(target)} of business time from "
                f"{start.isoformat()}"
            )
            for line in cal.explain(start, target, pauses).lines():
                typer.echo(f"  {line}")
        if tk.first_response_at is not None:
            typer.echo(f"\nfirst response given at {tk.first_response_at.isoformat()}")

    with_app(go)


# ---------------------------------------------------------------------- reports


def _parse_moment(value: str, tz_name: str, *, end: bool = False) -> datetime:
    """``2026-03-01`` (a local day: its start, or its end with ``end``) or an ISO datetime."""
    from datetime import date as date_cls
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    tz = ZoneInfo(tz_name)
    try:
        day = date_cls.fromisoformat(value)
    except ValueError:
        at = datetime.fromisoformat(value)
        return at if at.tzinfo else at.replace(tzinfo=tz)
    start = datetime(day.year, day.month, day.day, tzinfo=tz)
    return start + timedelta(days=1) if end else start


@app.command()
def report(
    since: Annotated[str, typer.Option(help="Start: YYYY-MM-DD (local day) or ISO datetime.")],
    until: Annotated[str, typer.Option(help="End: YYYY-MM-DD (whole day included) or ISO.")],
    format_: Annotated[str, typer.Option("--format", help="text, json or csv.")] = "text",
) -> None:
    """The digest's figures for any period (managers' time zone for plain dates)."""
    import csv

    import yaml

    from escalation.report import compute_report

    if format_ not in ("text", "json", "csv"):
        typer.echo("--format must be text, json or csv", err=True)
        raise typer.Exit(2)

    async def go(a: App) -> None:
        tz = a.settings.digest.timezone
        try:
            start = _parse_moment(since, tz)
            end = _parse_moment(until, tz, end=True)
        except ValueError as exc:
            typer.echo(f"bad date: {exc}", err=True)
            raise typer.Exit(2) from None
        rep = await compute_report(a.db, a.content, a.settings, start, end, a.clock.now())
        if format_ == "json":
            typer.echo(json.dumps(rep.to_json(), ensure_ascii=False, indent=2))
        elif format_ == "csv":
            csv.writer(sys.stdout).writerows(rep.to_csv_rows())
        else:
            typer.echo(yaml.safe_dump(rep.to_json(), allow_unicode=True, sort_keys=False))

    with_app(go)


@app.command()
def digest(
    day: Annotated[str | None, typer.Option(help="YYYY-MM-DD (default: yesterday).")] = None,
    send: Annotated[bool, typer.Option(help="Queue it to the recipients (once a day).")] = False,
    lang: Annotated[str | None, typer.Option(help="en or ru (default: [digest] language).")] = None,
) -> None:
    """Print the daily SLA digest, or send it to the configured recipients."""
    from datetime import date as date_cls
    from datetime import timedelta
    from zoneinfo import ZoneInfo

    from escalation.digest import build_digest, send_digest

    async def go(a: App) -> None:
        now = a.clock.now()
        tz = ZoneInfo(a.settings.digest.timezone)
        the_day = (
            date_cls.fromisoformat(day) if day else (now.astimezone(tz) - timedelta(days=1)).date()
        )
        if send:
            n = await send_digest(a, the_day, now)
            typer.echo(f"queued for {n} recipient(s); already sent ones are skipped")
            return
        d = await build_digest(a, the_day, now, lang=lang)
        typer.echo(d.text)
        if d.image_png is not None:
            path = Path(d.image_name)
            await asyncio.to_thread(path.write_bytes, d.image_png)
            typer.echo(f"\n(chart saved to {path})")

    with_app(go)


@app.command()
def export(
    out: Annotated[Path | None, typer.Option(help="Write to this file (default: stdout).")] = None,
    since: Annotated[str | None, typer.Option(help="Only changes since YYYY-MM-DD or ISO.")] = None,
) -> None:
    """Tickets and events as JSON lines (backups, BI)."""
    from bot.export import export_lines

    async def go(a: App) -> None:
        start = _parse_moment(since, a.settings.digest.timezone) if since else None
        lines = export_lines(a.db, since=start, prefix=a.settings.escalation.ticket_prefix)
        if out is None:
            async for line in lines:
                typer.echo(line)
            return
        count = 0
        with out.open("w", encoding="utf-8") as fh:
            async for line in lines:
                fh.write(line + "\n")
                count += 1
        typer.echo(f"{count} lines written to {out}", err=True)

    with_app(go)


# ---------------------------------------------------------------------- KB


def _kb_only() -> Any:
    """The KB as the bot loads it, without a database (categories from content if valid)."""
    from bot.app import match_settings
    from config.categories import load_categories
    from kb.service import KnowledgeBase

    settings = settings_or_exit()
    cats, _ = load_categories(settings.content.path("categories"))
    return KnowledgeBase(
        settings.kb.folder(),
        categories={c.id for c in cats} or None,
        category_keywords={c.id: dict(c.keywords) for c in cats},
        settings=match_settings(settings),
    )


@kb_app.command("check")
def kb_check() -> None:
    """Validate every article: fields, duplicate ids, unknown categories, colliding phrasings."""
    from kb.cli_support import check_lines

    kb = _kb_only()
    for line in check_lines(kb.problems):
        typer.echo(line, err=bool(kb.problems))
    if kb.problems:
        raise typer.Exit(2)
    typer.echo(f"OK: {len(kb.articles)} articles")


@kb_app.command("search")
def kb_search(
    question: Annotated[
        str | None, typer.Argument(help="Omit to read questions from stdin.")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per question.")] = False,
    lang: Annotated[str | None, typer.Option(help="Prefer articles in this language.")] = None,
) -> None:
    """Print the matcher's decision and the top 3 articles with scores."""
    from kb.cli_support import search_lines

    kb = _kb_only()
    if kb.problems:
        typer.echo(
            f"warning: the KB has {len(kb.problems)} problem(s); `firstline kb check` lists them",
            err=True,
        )
    questions = [question] if question is not None else (line for line in sys.stdin)
    for line in search_lines(kb, questions, as_json, lang):
        typer.echo(line)


@kb_app.command("gaps")
def kb_gaps(
    min_count: Annotated[int, typer.Option(help="Smallest group to list.")] = 2,
    days: Annotated[int, typer.Option(help="Look back this many days.")] = 30,
) -> None:
    """Frequent questions with no good match or a "didn't help", grouped by similarity."""
    from datetime import timedelta

    from bot.storage.models import KbImpression, KbQuery
    from kb.cli_support import gaps_lines
    from kb.gaps import find_gaps

    async def go(a: App) -> None:
        since = a.clock.now() - timedelta(days=days)
        async with a.db.read() as s:
            none = (
                (
                    await s.execute(
                        select(KbQuery.query).where(KbQuery.decision == "none", KbQuery.at >= since)
                    )
                )
                .scalars()
                .all()
            )
            failed = (
                (
                    await s.execute(
                        select(KbImpression.query).where(
                            KbImpression.verdict == "not_helped", KbImpression.shown_at >= since
                        )
                    )
                )
                .scalars()
                .all()
            )
        questions = [(q, "no_match") for q in none] + [(q, "not_helped") for q in failed]
        clusters = find_gaps(questions, min_count=min_count)
        if not clusters:
            typer.echo("no gaps found")
        for line in gaps_lines(clusters):
            typer.echo(line)

    with_app(go)


@drafts_app.callback()
def drafts_list(ctx: typer.Context) -> None:
    """List KB drafts waiting for approval."""
    if ctx.invoked_subcommand is not None:
        return
    from bot.storage.models import KbDraft

    async def go(a: App) -> None:
        async with a.db.read() as s:
            rows = (
                (
                    await s.execute(
                        select(KbDraft).where(KbDraft.status == "draft").order_by(KbDraft.id)
                    )
                )
                .scalars()
                .all()
            )
        if not rows:
            typer.echo("no drafts")
        for d in rows:
            typer.echo(
                f"#{d.id} [{d.lang}/{d.category or '-'}] Q: {d.question[:80]}\n"
                f"    A: {d.answer[:200]}"
            )

    with_app(go)


@drafts_app.command("approve")
def drafts_approve(
    draft_id: int,
    title: Annotated[
        str | None, typer.Option(help="Article title (default: the question).")
    ] = None,
) -> None:
    """Turn a draft into a KB article file (picked up by the running bot automatically)."""
    from bot.storage.models import KbDraft
    from kb.drafts import write_article

    async def go(a: App) -> None:
        async with a.db.transaction() as s:
            d = await s.get(KbDraft, draft_id)
            if d is None or d.status != "draft":
                typer.echo(f"no pending draft #{draft_id}", err=True)
                raise typer.Exit(1)
            category = d.category or "other"
            path = write_article(
                a.content.kb_dir,
                draft_id=d.id,
                question=d.question,
                answer=d.answer,
                category=category,
                lang=d.lang,
                title=title,
            )
            d.status = "approved"
            d.article_path = str(path)
            d.decided_at = a.clock.now()
        typer.echo(f"article written: {path}")

    with_app(go)


@drafts_app.command("reject")
def drafts_reject(draft_id: int) -> None:
    """Discard a draft."""
    from bot.storage.models import KbDraft

    async def go(a: App) -> None:
        async with a.db.transaction() as s:
            d = await s.get(KbDraft, draft_id)
            if d is None or d.status != "draft":
                typer.echo(f"no pending draft #{draft_id}", err=True)
                raise typer.Exit(1)
            d.status = "rejected"
            d.decided_at = a.clock.now()
        typer.echo(f"draft #{draft_id} rejected")

    with_app(go)


# ---------------------------------------------------------------------- customers and status


@customers_app.command("import")
def customers_import(path: Path) -> None:
    """Import directory entries: the customers.yaml shape, or a CSV with the columns
    platform,user_id,organisation,tier. Imported entries win over the file."""
    from escalation.customers import import_rows

    async def go(a: App) -> None:
        try:
            rows = import_rows(path, set(a.content.sla.tiers))
        except ContentError as exc:
            fail(exc.problems)
        n = await a.desk.import_customers(rows)
        typer.echo(f"imported {n} directory entries")

    with_app(go)


@app.command()
def retention(
    older_than: Annotated[str, typer.Option(help="e.g. 365d: anonymise what ended before.")],
) -> None:
    """Anonymise ended conversations and closed tickets older than the period (the SLA
    statistics stay, in anonymised form) and forget old processed-event ids."""
    from bot.privacy import apply_retention
    from config.settings import parse_duration

    try:
        period = parse_duration(older_than)
    except ValueError as exc:
        typer.echo(str(exc), err=True)
        raise typer.Exit(2) from None

    async def go(a: App) -> None:
        counts = await apply_retention(a.db, a.clock, period)
        typer.echo(", ".join(f"{k}: {v}" for k, v in counts.items()) or "nothing to do")

    with_app(go)


WAITING = ("pending", "sending")
SHOWN_ROWS = 5  # rows listed per section of `firstline status`


def _row_info(row: Any, now: datetime) -> dict[str, Any]:
    return {
        "id": row.id,
        "channel": row.channel,
        "target": row.target,
        "kind": row.kind,
        "ticket_id": row.ticket_id,
        "attempts": row.attempts,
        "age_seconds": round(max((now - row.created_at).total_seconds(), 0.0), 1),
        "next_try_in_seconds": round(max((row.next_attempt_at - now).total_seconds(), 0.0), 1),
        "error": (row.last_error or "")[:300],
    }


async def status_report(db: Database, now: datetime) -> dict[str, Any]:
    """The outbox as an operator needs it: how far behind (lag), per channel, which platform
    errors are being retried right now, the latest deliveries given up on; tickets by state.
    """
    from sqlalchemy import func

    from bot.inbox import inbox_stats
    from bot.outbox import outbox_stats
    from bot.storage.models import Outbox

    stats = await outbox_stats(db, now)
    parked = await inbox_stats(db)
    async with db.read() as s:
        per_channel = (
            await s.execute(
                select(Outbox.channel, Outbox.status, func.count(), func.min(Outbox.created_at))
                .where(Outbox.status.in_((*WAITING, "failed")))
                .group_by(Outbox.channel, Outbox.status)
            )
        ).all()
        retrying = (
            await s.execute(
                select(Outbox)
                .where(Outbox.status.in_(WAITING), Outbox.attempts > 0)
                .order_by(Outbox.id)
                .limit(SHOWN_ROWS)
            )
        ).scalars()
        retrying_info = [_row_info(r, now) for r in retrying]
        n_retrying = (
            await s.execute(
                select(func.count())
                .select_from(Outbox)
                .where(Outbox.status.in_(WAITING), Outbox.attempts > 0)
            )
        ).scalar_one()
        failed = (
            await s.execute(
                select(Outbox)
                .where(Outbox.status == "failed")
                .order_by(Outbox.id.desc())
                .limit(SHOWN_ROWS)
            )
        ).scalars()
        failed_info = [_row_info(r, now) for r in failed]
        tickets = (
            await s.execute(select(Ticket.status, func.count()).group_by(Ticket.status))
        ).all()
    channels: dict[str, dict[str, Any]] = {}
    for channel, status_, n, oldest in per_channel:
        c = channels.setdefault(channel, {"waiting": 0, "failed": 0, "lag_seconds": 0.0})
        if status_ == "failed":
            c["failed"] += int(n)
            continue
        c["waiting"] += int(n)
        lag = max((now - oldest).total_seconds(), 0.0)
        c["lag_seconds"] = round(max(c["lag_seconds"], lag), 1)
    return {
        "outbox": {
            "counts": stats["counts"],
            "lag_seconds": round(stats["lag_seconds"], 1),
            "channels": channels,
            "retrying": int(n_retrying),
            "retrying_rows": retrying_info,
            "failed_rows": failed_info,
        },
        "inbox": parked,
        "tickets": {st: int(n) for st, n in tickets},
    }


def status_lines(report: dict[str, Any]) -> list[str]:
    """``firstline status`` for a human."""
    out = report["outbox"]
    counts = out["counts"]
    waiting = sum(int(counts.get(k, 0)) for k in WAITING)
    lines = [
        f"outbox: {waiting} waiting, {counts.get('failed', 0)} failed; "
        f"lag {out['lag_seconds']:.1f}s (oldest unsent row)"
    ]
    for name, c in sorted(out["channels"].items()):
        lines.append(
            f"  {name}: {c['waiting']} waiting, lag {c['lag_seconds']:.1f}s; {c['failed']} failed"
        )
    if out["retrying"]:
        lines.append(f"platform errors being retried: {out['retrying']} rows")
        for r in out["retrying_rows"]:
            lines.append(
                f"  #{r['id']} {r['channel']} {r['target']} {r['kind']}: {r['attempts']} "
                f"attempts, next in {r['next_try_in_seconds']:.0f}s — {r['error']}"
            )
    if out["failed_rows"]:
        lines.append("given up (latest first):")
        for r in out["failed_rows"]:
            lines.append(
                f"  #{r['id']} {r['channel']} {r['target']} {r['kind']}: "
                f"{r['attempts']} attempts — {r['error']}"
            )
    parked = report["inbox"]
    if parked["parked"] or parked["given_up"]:
        lines.append(
            f"inbox: {parked['parked']} acknowledged requests waiting for a replay, "
            f"{parked['given_up']} given up after {MAX_REPLAYS} failed replays"
        )
    tickets = report["tickets"]
    lines.append("tickets: " + (", ".join(f"{k}={v}" for k, v in tickets.items()) or "none"))
    return lines


@app.command()
def status(
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object.")] = False,
) -> None:
    """Outbox lag per channel, platform errors being retried, failed deliveries, tickets.

    Exits with 1 when the database cannot be reached (the outbox is stalled too)."""
    from bot.storage.errors import database_unavailable

    async def go(a: App) -> None:
        report = await status_report(a.db, a.clock.now())
        if as_json:
            typer.echo(json.dumps(report, ensure_ascii=False))
            return
        for line in status_lines(report):
            typer.echo(line)

    try:
        with_app(go)
    except Exception as exc:
        if not database_unavailable(exc):
            raise
        typer.echo(f"database unavailable: {type(exc).__name__}: {exc}"[:500], err=True)
        raise typer.Exit(1) from exc


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
