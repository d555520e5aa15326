"""The operator interface (SPEC §10): serve, keys, credits. Thin: it calls the same store functions
as the HTTP API; domain errors become CLI errors here only."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging.config
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.cli_output import fail, note
from imagegate.config import Config, ConfigError, load_config
from imagegate.core.catalog import Catalog
from imagegate.errors import ImagegateError
from imagegate.net.hosts import url_host
from imagegate.owner_only import private_dir
from imagegate.runtime import preflight
from imagegate.service import accounts
from imagegate.stores import keys, ledger
from imagegate.stores.db import ApiKey, Database
from imagegate.stores.db import migrate as migrate_database
from imagegate.stores.db import prepare as prepare_database
from imagegate.stores.faults import explain, redacted

T = TypeVar("T")


class OperatorErrors(typer.core.TyperGroup):
    """Every command's expected operator errors (database unreachable, missing or unmigrated, a bucket
    that does not exist, an unwritable directory) as one line and exit status 2, not a traceback."""

    def invoke(self, ctx: Any) -> Any:  # typer's vendored click.Context
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = explain(exc)
            if message is None:
                raise
            raise fail(message) from None


app = typer.Typer(
    cls=OperatorErrors,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="imagegate: a self-hosted image-editing API server.",
)
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
credits_app = typer.Typer(no_args_is_help=True, help="Grant, deduct and audit a key's credits.")
app.add_typer(keys_app, name="keys")
channels_app = typer.Typer(no_args_is_help=True, help="Inspect the configured upstream channels.")
app.add_typer(credits_app, name="credits")
app.add_typer(channels_app, name="channels")
models_app = typer.Typer(no_args_is_help=True, help="Download, list and check the local engine's models.")
app.add_typer(models_app, name="models")

DataDir = Annotated[
    Path | None,
    typer.Option("--data-dir", envvar="IMAGEGATE_DATA_DIR", help="Database and files (default ./imagegate-data)."),
]
ConfigFile = Annotated[
    Path | None, typer.Option("--config", envvar="IMAGEGATE_CONFIG", help="TOML configuration file.")
]


def _config(data_dir: Path | None, config_file: Path | None) -> Config:
    try:
        return load_config(config_file, data_dir=data_dir)
    except ConfigError as exc:
        raise fail(str(exc)) from exc


def _catalog_with_channels(config: Config) -> Catalog:
    """The catalog, after checking every channel of `config` (exit 2 naming the bad key)."""
    from imagegate.builtins import builtin_registry
    from imagegate.service.channels import check_channels

    try:
        catalog = Catalog.from_config(config.models)
        check_channels(config, catalog, builtin_registry().engines)
    except (ConfigError, ValueError) as exc:
        raise fail(str(exc)) from exc
    return catalog


def _with_session(config: Config, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction on the configured database."""

    async def main() -> T:
        private_dir(config.data_dir)
        prepare_database(config.resolved_database_url)
        db = Database(config.resolved_database_url)
        try:
            async with db.session() as session, session.begin():
                return await work(session)
        finally:
            await db.aclose()

    try:
        return asyncio.run(main())
    except ImagegateError as exc:
        raise fail(exc.message, 1) from exc


def _decimal(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation as exc:
        raise typer.BadParameter(f"not a number: {text!r}") from exc


@app.command()
def serve(
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
) -> None:
    """Run the API server (offline, classic engine, SQLite in the data dir, unless configured otherwise)."""
    from imagegate import server
    from imagegate.app import create_app

    config = _config(data_dir, config_file)
    _catalog_with_channels(config)
    preflight(config)
    server.listening_socket(host, port).close()  # a port in use is told before any key is made

    async def first_keys(session: AsyncSession) -> tuple[keys.NewKey, keys.NewKey] | None:
        if await keys.count_keys(session):
            return None
        user = await keys.create_key(session, name="first", credits=Decimal(config.first_key_credits))
        return user, await keys.create_key(session, name="admin", credits=Decimal(0), admin=True)

    created = _with_session(config, first_keys)
    if created is not None:
        user, admin_key = created
        print(f"No API key existed, so one was created with {user.credits} credits. It is shown only once:")
        print(user.raw)
        print(f"Its webhook signing secret (for callbacks): {user.webhook_secret}")
        print("An admin key was made too, for the console's admin pages and the admin API (shown once):")
        print(admin_key.raw, flush=True)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(
        f"The web console: http://{url_host(shown)}:{port}/ (sign in with an API key)",
        flush=True,
    )
    server.run(create_app(config), host=host, port=port, limits=config.limits)


Rpm = Annotated[int | None, typer.Option("--rpm", min=0, help="Requests per minute (0 unlimited).")]
MaxActive = Annotated[int | None, typer.Option("--max-active", min=0, help="Unfinished tasks at once (0 unlimited).")]
MaxImages = Annotated[int | None, typer.Option("--max-images", min=0, help="Images per request (0 unlimited).")]
Models = Annotated[str | None, typer.Option("--models", help="Comma-separated model ids the key may use.")]
Expires = Annotated[str | None, typer.Option("--expires", help="When the key stops working (ISO date/time, UTC).")]


def _settings(
    rpm: int | None, max_active: int | None, max_images: int | None, models: str | None, expires: str | None
) -> dict[str, Any]:
    settings: dict[str, Any] = {"rpm": rpm, "max_active": max_active, "max_images": max_images}
    if models is not None:
        settings["models"] = [m.strip() for m in models.split(",") if m.strip()]
    if expires is not None:
        try:
            moment = dt.datetime.fromisoformat(expires)
        except ValueError as exc:
            raise typer.BadParameter(f"not an ISO date/time: {expires!r}", param_hint="--expires") from exc
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        settings["expires_at"] = int(moment.timestamp() * 1000)
    return {name: value for name, value in settings.items() if value is not None}


def _print_json(value: object) -> None:
    print(json.dumps(value, ensure_ascii=False))


@app.command()
def worker(
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    concurrency: Annotated[int | None, typer.Option(min=1, help="Tasks run at once.")] = None,
    queues: Annotated[str | None, typer.Option(help="Comma-separated queues to take jobs from.")] = None,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            min=0, max=65535, help="Serve /metrics, /healthz and /readyz on this port ([worker] metrics_host)."
        ),
    ] = None,
) -> None:
    """Run async tasks from the PostgreSQL queue (distributed mode); `serve` then answers HTTP only."""
    from imagegate.worker import run_worker, worker_log_config

    config = _config(data_dir, config_file)
    if not config.uses_procrastinate:
        raise fail("workers need PostgreSQL: set IMAGEGATE_DATABASE_URL=postgresql://...")
    _catalog_with_channels(config)
    preflight(config)
    chosen = [q.strip() for q in queues.split(",") if q.strip()] if queues else None
    logging.config.dictConfig(worker_log_config())
    asyncio.run(run_worker(config, concurrency=concurrency, queues=chosen, metrics_port=metrics_port))


@app.command()
def migrate(data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Bring the database (SQLite in the data dir, or IMAGEGATE_DATABASE_URL) to the newest schema."""
    config = _config(data_dir, config_file)
    private_dir(config.data_dir)
    migrate_database(config.resolved_database_url)
    print(f"migrated {redacted(config.resolved_database_url)}")


@keys_app.command("create")
def keys_create(
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    credits: Annotated[str, typer.Option(help="Starting balance in credits.")] = "0",
    admin: Annotated[bool, typer.Option("--admin", help="May use the admin API.")] = False,
    rpm: Rpm = None,
    max_active: MaxActive = None,
    max_images: MaxImages = None,
    models: Models = None,
    expires: Expires = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, key, webhook_secret, ...} as JSON.")] = False,
) -> None:
    """Create a key; the raw key is printed alone on the last line and never shown again."""
    amount = _decimal(credits)
    settings = _settings(rpm, max_active, max_images, models, expires)
    config = _config(data_dir, config_file)

    async def create(session: AsyncSession) -> tuple[keys.NewKey, dict[str, Any]]:
        new = await keys.create_key(session, name=name, credits=amount, admin=admin, **settings)
        row = await session.get(ApiKey, new.id)
        assert row is not None
        return new, accounts.key_view(row, config.accounts)

    new, view = _with_session(config, create)
    if not amount:
        note(
            f"note: key {new.id} has 0 credits, so its image requests will be refused (402) until you "
            f"grant some: imagegate credits grant {new.id} 100 (or create it with --credits)"
        )
    if as_json:
        _print_json({"id": new.id, "key": new.raw, "webhook_secret": new.webhook_secret, **view})
    else:
        print(f"created key {new.id} ({new.name or 'unnamed'}, {new.credits} credits{', admin' if admin else ''})")
        print(new.raw)


@keys_app.command("list")
def keys_list(
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the keys as a JSON array.")] = False,
) -> None:
    """List keys with balances and limits (never the raw keys)."""
    config = _config(data_dir, config_file)
    rows = _with_session(config, keys.list_keys)
    views = [accounts.key_view(row, config.accounts) for row in rows]
    if as_json:
        _print_json(views)
        return
    table = Table("id", "name", "prefix", "balance", "held", "rpm", "active", "images", "admin", "state", "last used")
    for view in views:
        limits = view["effective_limits"]
        used = view["last_used_at"]
        table.add_row(
            view["id"],
            view["name"],
            view["prefix"],
            view["balance"],
            view["held"],
            *(str(limits[name] or "∞") for name in ("rpm", "max_active", "max_images")),
            "yes" if view["admin"] else "",
            view["state"],
            dt.datetime.fromtimestamp(used, dt.UTC).strftime("%Y-%m-%d %H:%M") if used else "never",
        )
    Console(width=200).print(table)


@keys_app.command("limits")
def keys_limits(
    key_id: str,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    rpm: Rpm = None,
    max_active: MaxActive = None,
    max_images: MaxImages = None,
    models: Models = None,
    expires: Expires = None,
) -> None:
    """Change key ID's own limits, allowed models or expiry (options not given stay as they are)."""
    settings = _settings(rpm, max_active, max_images, models, expires)
    config = _config(data_dir, config_file)
    row = _with_session(config, lambda s: keys.update_key(s, key_id, settings))
    _print_json(accounts.key_view(row, config.accounts))


@keys_app.command("revoke")
def keys_revoke(key_id: str, data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Revoke a key by id; it stops authenticating at once."""
    row = _with_session(_config(data_dir, config_file), lambda s: keys.revoke_key(s, key_id))
    print(f"revoked {row.id}")


@keys_app.command("rotate-secret")
def keys_rotate_secret(key_id: str, data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Replace key ID's webhook signing secret; the new secret is printed alone on the last line."""
    secret = _with_session(_config(data_dir, config_file), lambda s: keys.rotate_webhook_secret(s, key_id))
    print(f"rotated the webhook secret of {key_id}")
    print(secret)


Note = Annotated[str, typer.Option("--note", help="Why (kept on the ledger row).")]
Move = Callable[[AsyncSession, str, Decimal, str], Awaitable[ApiKey]]


def _move_credits(
    move: Move, key_id: str, amount: str, data_dir: Path | None, config_file: Path | None, note: str
) -> None:
    value = _decimal(amount)
    row = _with_session(_config(data_dir, config_file), lambda s: move(s, key_id, value, note))
    print(f"{row.id} now has {accounts.credits(row.credits)} credits")


@credits_app.command("grant")
def credits_grant(
    key_id: str, amount: str, data_dir: DataDir = None, config_file: ConfigFile = None, note: Note = ""
) -> None:
    """Add AMOUNT credits to key ID (a ledger `grant`)."""
    _move_credits(ledger.grant, key_id, amount, data_dir, config_file, note)


@credits_app.command("deduct")
def credits_deduct(
    key_id: str, amount: str, data_dir: DataDir = None, config_file: ConfigFile = None, note: Note = ""
) -> None:
    """Take AMOUNT credits from key ID's available balance (a ledger `deduct`)."""
    _move_credits(ledger.deduct, key_id, amount, data_dir, config_file, note)


@credits_app.command("ledger")
def credits_ledger(
    key_id: str,
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    limit: Annotated[int, typer.Option(min=1, help="Rows to show, newest first.")] = 50,
) -> None:
    """Print key ID's newest ledger rows as JSON lines."""
    rows = _with_session(_config(data_dir, config_file), lambda s: ledger.entries(s, key_id, limit=limit))
    for row in rows:
        _print_json(accounts.entry_view(row))


@channels_app.command("check")
def channels_check(data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Probe every configured channel and print its health; exits 1 when any cannot be reached."""
    from imagegate.builtins import builtin_registry
    from imagegate.core.upstream import RelayHosts
    from imagegate.net.fetch import SafeFetcher
    from imagegate.runtime import fetch_policy
    from imagegate.service.channels import open_channels, probe, relay_hosts
    from imagegate.service.router import Channel
    from imagegate.stores.blobs import open_blob_store

    config = _config(data_dir, config_file)
    catalog = _catalog_with_channels(config)
    if not config.channels:
        print("No channel is configured: the built-in classic engine serves every model.")
        return

    async def probe_all() -> list[tuple[Channel, str, bool]]:
        async with AsyncExitStack() as stack:
            fetcher = SafeFetcher(fetch_policy(config))
            stack.push_async_callback(fetcher.aclose)
            blobs = open_blob_store(config.storage.url, config.files_dir)
            hosts = RelayHosts(*relay_hosts(config, blobs))
            channels = open_channels(config, catalog, builtin_registry().engines, fetcher, hosts)
            for channel in channels:
                stack.push_async_callback(channel.engine.aclose)
            results = []
            for channel in channels:
                try:
                    results.append((channel, await probe(channel), True))
                except ImagegateError as exc:
                    results.append((channel, exc.message, False))
            return results

    results = asyncio.run(probe_all())
    table = Table("channel", "engine", "base url", "models", "priority", "weight", "health")
    for channel, health, ok in results:
        settings = channel.settings
        table.add_row(
            settings.name,
            settings.engine,
            settings.base_url or "",
            ", ".join(settings.models) or "all",
            str(settings.priority),
            str(settings.weight),
            health if ok else f"[red]down: {health}[/red]",
        )
    Console(width=200).print(table)
    if not all(ok for _, _, ok in results):
        raise typer.Exit(1)


@models_app.command("pull")
def models_pull(
    repo_id: Annotated[str, typer.Argument(help="A Hub repo id, e.g. black-forest-labs/FLUX.2-klein-4B.")],
    revision: Annotated[str | None, typer.Option(help="A branch, tag or commit.")] = None,
) -> None:
    """Download a diffusers pipeline into the Hugging Face cache (HF_HOME, HF_HUB_CACHE), with progress."""
    from imagegate.models_cli import pull_model

    pull_model(repo_id, revision)


@models_app.command("list")
def models_list(data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """The pipelines on disk: size, family, what each can do, which channels use it."""
    from imagegate.models_cli import list_models

    list_models(_config(data_dir, config_file))


@models_app.command("check")
def models_check(data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Load each local channel's model and run one small step; exits 1 when any fails."""
    from imagegate.models_cli import check_models

    check_models(_config(data_dir, config_file))


ServerUrl = Annotated[str, typer.Option("--server", envvar="IMAGEGATE_URL", help="The server's base URL.")]
ApiKeyOption = Annotated[
    str, typer.Option("--key", envvar="IMAGEGATE_API_KEY", help="Your API key.", show_default=False)
]
Prompt = Annotated[str, typer.Option("--prompt", "-p", help="What to do (or draw).")]
Size = Annotated[str | None, typer.Option(help="WxH, a ratio like 16:9 (with --async), or auto.")]
Quality = Annotated[str | None, typer.Option(help="low, medium, high or auto.")]
Count = Annotated[int, typer.Option("--n", min=1, max=10, help="How many images.")]
Format = Annotated[str, typer.Option("--format", help="png, jpeg or webp.")]
Out = Annotated[Path | None, typer.Option("--output", "-o", help="Where to write (numbered when n > 1).")]
Model = Annotated[str, typer.Option(help="The model.")]
RunAsync = Annotated[bool, typer.Option("--async", help="Submit a task and poll it.")]


def _client_call(url: str, key: str, work: Callable[[Any], T]) -> T:
    """`work(server)`; a failure is one line on stderr and exit status 1."""
    from httpx import HTTPError

    from imagegate.client_cli import Failed, Server

    try:
        return work(Server(url, key))
    except Failed as exc:
        raise fail(str(exc), 1) from None
    except HTTPError as exc:
        raise fail(f"cannot reach {url}: {exc}", 1) from None


def _make(
    url: str,
    key: str,
    images: list[Path],
    prompt: str,
    model: str,
    size: str | None,
    quality: str | None,
    n: int,
    fmt: str,
    output: Path | None,
    run_async: bool,
) -> None:
    """`edit` (with `images`) or `generate` (without): streamed, or as an async task; files written."""
    from imagegate.client_cli import form_fields, output_paths, run_async_task, run_streamed, write

    if run_async and n > 1:
        raise typer.BadParameter("an async task makes one image", param_hint="--n")
    if run_async:
        made = _client_call(url, key, lambda s: run_async_task(s, model, prompt, images, size, quality, fmt))
    else:
        files = [("image[]", (path.name, path.read_bytes(), "application/octet-stream")) for path in images]
        fields = form_fields(prompt, model, size, quality, n, fmt)
        path = "/v1/images/edits" if images else "/v1/images/generations"
        made = _client_call(url, key, lambda s: run_streamed(s, path, fields, files or None))
    write(made, output_paths(images, output, len(made), fmt))


@app.command()
def edit(
    images: Annotated[list[Path], typer.Argument(exists=True, dir_okay=False, help="Input images, in order.")],
    prompt: Prompt,
    key: ApiKeyOption,
    server: ServerUrl = "http://127.0.0.1:8000",
    model: Model = "gpt-image-2",
    size: Size = None,
    quality: Quality = None,
    n: Count = 1,
    fmt: Format = "png",
    output: Out = None,
    run_async: RunAsync = False,
) -> None:
    """Edit IMAGES with a prompt on a running server; writes IMAGE.edited.png (numbered for n > 1)."""
    _make(server, key, images, prompt, model, size, quality, n, fmt, output, run_async)


@app.command()
def generate(
    prompt: Prompt,
    key: ApiKeyOption,
    server: ServerUrl = "http://127.0.0.1:8000",
    model: Model = "gpt-image-2",
    size: Size = None,
    quality: Quality = None,
    n: Count = 1,
    fmt: Format = "png",
    output: Out = None,
    run_async: RunAsync = False,
) -> None:
    """Generate images from a prompt on a running server; writes generated.png (numbered for n > 1)."""
    _make(server, key, [], prompt, model, size, quality, n, fmt, output, run_async)


@app.command()
def tasks(
    key: ApiKeyOption,
    task_id: Annotated[str | None, typer.Argument(help="One task to show in full.")] = None,
    server: ServerUrl = "http://127.0.0.1:8000",
) -> None:
    """Your recent tasks on a running server, or one task in full."""
    from imagegate.client_cli import show_tasks

    _client_call(server, key, lambda s: show_tasks(s, task_id))


@app.command()
def usage(key: ApiKeyOption, server: ServerUrl = "http://127.0.0.1:8000") -> None:
    """Your balance, holds and recent activity on a running server."""
    from imagegate.client_cli import show_usage

    _client_call(server, key, show_usage)


def main() -> None:
    app(prog_name="imagegate")


if __name__ == "__main__":
    main()
