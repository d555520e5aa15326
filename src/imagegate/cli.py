"""The operator interface (SPEC §10): serve, keys, credits. Thin: it calls the same store functions
as the HTTP API; domain errors become CLI errors here only."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncSession

from imagegate.config import Config, ConfigError, load_config
from imagegate.errors import ImagegateError
from imagegate.stores import keys
from imagegate.stores.db import Database, migrate

T = TypeVar("T")
app = typer.Typer(no_args_is_help=True, add_completion=False, help="imagegate: a self-hosted image-editing API server.")
keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys.")
credits_app = typer.Typer(no_args_is_help=True, help="Grant credits to a key.")
app.add_typer(keys_app, name="keys")
app.add_typer(credits_app, name="credits")
err = Console(stderr=True)

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
        err.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from exc


def _with_session(config: Config, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run `work` in one committed transaction on the configured database."""

    async def main() -> T:
        config.data_dir.mkdir(parents=True, exist_ok=True)
        migrate(config.resolved_database_url)
        db = Database(config.resolved_database_url)
        try:
            async with db.session() as session, session.begin():
                return await work(session)
        finally:
            await db.aclose()

    try:
        return asyncio.run(main())
    except ImagegateError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from exc


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
    import uvicorn

    from imagegate.app import create_app

    config = _config(data_dir, config_file)

    async def first_key(session: AsyncSession) -> keys.NewKey | None:
        if await keys.count_keys(session):
            return None
        return await keys.create_key(session, name="first", credits=Decimal(config.first_key_credits))

    created = _with_session(config, first_key)
    if created is not None:
        print(f"No API key existed, so one was created with {created.credits} credits. It is shown only once:")
        print(created.raw, flush=True)
    uvicorn.run(create_app(config), host=host, port=port, log_level="info", access_log=False)


@keys_app.command("create")
def keys_create(
    data_dir: DataDir = None,
    config_file: ConfigFile = None,
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
    credits: Annotated[str, typer.Option(help="Starting balance in credits.")] = "0",
    admin: Annotated[bool, typer.Option("--admin", help="May use the admin API.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print {id, key, webhook_secret} as JSON.")] = False,
) -> None:
    """Create a key; the raw key is printed alone on the last line and never shown again."""
    amount = _decimal(credits)
    config = _config(data_dir, config_file)
    new = _with_session(config, lambda s: keys.create_key(s, name=name, credits=amount, admin=admin))
    if as_json:
        shown = {"id": new.id, "key": new.raw, "webhook_secret": new.webhook_secret, "name": new.name}
        print(json.dumps({**shown, "credits": str(new.credits)}))
    else:
        print(f"created key {new.id} ({new.name or 'unnamed'}, {new.credits} credits{', admin' if admin else ''})")
        print(new.raw)


@keys_app.command("list")
def keys_list(data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """List keys (never the raw keys)."""
    rows = _with_session(_config(data_dir, config_file), keys.list_keys)
    table = Table("id", "name", "prefix", "credits", "admin", "state")
    for row in rows:
        table.add_row(
            row.id,
            row.name,
            row.prefix + "…",
            str(row.credits),
            "yes" if row.is_admin else "",
            "revoked" if row.revoked_at else "active",
        )
    Console(width=200).print(table)


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


@credits_app.command("grant")
def credits_grant(key_id: str, amount: str, data_dir: DataDir = None, config_file: ConfigFile = None) -> None:
    """Add AMOUNT credits to key ID."""
    value = _decimal(amount)
    row = _with_session(_config(data_dir, config_file), lambda s: keys.grant_credits(s, key_id, value))
    print(f"{row.id} now has {row.credits.normalize():f} credits")


def main() -> None:
    app(prog_name="imagegate")


if __name__ == "__main__":
    main()
