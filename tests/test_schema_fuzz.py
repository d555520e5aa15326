"""A bounded schema fuzz: schemathesis generates requests from `/openapi.json` (bodies included, valid
and invalid) and sends them to a real server; no answer may be a server error, every status must be
documented, every error body must have its dialect's documented shape, and a method a path does not
serve must answer 405 with an `Allow` header."""

from __future__ import annotations

import json
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok

from tests.conftest import LOOPBACK_ALLOW, free_port, invoke_cli, start_serve

pytestmark = pytest.mark.e2e
EXAMPLES = 12


@dataclass
class Fuzzed:
    base: str
    admin_key: str


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fuzzed]:
    """A server whose admin key has ample credits and no rate limit, so the fuzzer meets validation."""
    data_dir = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    env = {
        **os.environ,
        "IMAGEGATE_DATA_DIR": str(data_dir),
        "IMAGEGATE_FETCH_ALLOW": LOOPBACK_ALLOW,
        "IMAGEGATE_ACCOUNTS__REQUESTS_PER_MINUTE": "0",
        "IMAGEGATE_ACCOUNTS__MAX_ACTIVE_TASKS": "0",
    }
    with (data_dir / "serve.log").open("w") as log:
        proc = start_serve(port, env, log)
    made = invoke_cli("keys", "create", "--admin", "--credits", "1000000", "--json", env=env)
    try:
        yield Fuzzed(f"http://127.0.0.1:{port}", json.loads(made.stdout.strip().splitlines()[-1])["key"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)
        log_text = Path(data_dir / "serve.log").read_text()
        assert "Traceback" not in log_text, log_text[-3000:]


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_every_route_answers_as_documented(fuzzed: Fuzzed, mode: GenerationMode) -> None:
    schema = schemathesis.openapi.from_url(f"{fuzzed.base}/openapi.json")
    results = list(schema.get_all_operations())
    assert all(isinstance(result, Ok) for result in results), "the schema describes every operation validly"
    operations = [result.ok() for result in results if isinstance(result, Ok)]
    assert len(operations) >= 20, [op.label for op in operations]
    failures: list[str] = []
    for operation in operations:

        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def fuzz(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate(
                headers={"Authorization": f"Bearer {fuzzed.admin_key}"},
                checks=[
                    not_a_server_error,
                    status_code_conformance,
                    content_type_conformance,
                    response_schema_conformance,
                    unsupported_method,
                ],
                timeout=60,
            )

        try:
            fuzz()
        except Unsatisfiable:
            continue  # nothing of this operation can be made invalid (negative mode)
        except (Exception, FailureGroup) as exc:  # every operation is tried; failures are reported together
            failures.append(f"{operation.label}: {exc}"[:3000])
    assert not failures, "\n\n".join(failures)
