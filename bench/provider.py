"""A minimal OpenAI-compatible provider for the relay benchmarks: a few lines of ASGI that read the
request body and answer a prebuilt ImagesResponse (a POST after DELAY seconds, default none), so the cost
measured is the gateway's own.

    python -m bench.provider PORT ANSWER_FILE [DELAY]
"""

from __future__ import annotations

import asyncio
import resource
import sys
from pathlib import Path
from typing import Any

import uvicorn


def app_answering(body: bytes, delay_s: float = 0.0) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        if delay_s and scope["method"] == "POST":
            await asyncio.sleep(delay_s)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    port, answer = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    delay = float(sys.argv[3]) if len(sys.argv) > 3 else 0.0
    _, most = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (most, most))
    app = app_answering(answer, delay)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", lifespan="off", backlog=4096)
