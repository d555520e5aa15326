"""A minimal OpenAI-compatible provider for the relay-cost benchmark: a few lines of ASGI that read the
request body and answer a prebuilt ImagesResponse, so the cost measured is the gateway's own.

    python -m bench.provider PORT ANSWER_FILE
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import uvicorn


def app_answering(body: bytes) -> Any:
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return app


if __name__ == "__main__":
    port, answer = int(sys.argv[1]), Path(sys.argv[2]).read_bytes()
    uvicorn.run(app_answering(answer), host="127.0.0.1", port=port, log_level="warning", lifespan="off")
