"""A scripted OpenAI-compatible endpoint on localhost for the teacher's API backend tests (stdlib only).

`StubAPI(answer_of, script)`: POST /v1/chat/completions answers `\\boxed{answer_of(prompt)}`; `script`
maps a substring of the prompt to the replies that prompt gets first, in order: "ok", "429:<s>"
(Retry-After s), "500", "503", "400", "401", "hang:<s>" (no reply for s seconds), "drop" (close the
connection). Every request is recorded (headers, payload, time) in `requests`. With `upstream` (a real
server's /v1 root) "ok" forwards the request there instead: a fault-injecting proxy.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StubAPI:
    def __init__(
        self,
        answer_of: Callable[[str], str] = lambda prompt: "42",
        script: dict[str, list[str]] | None = None,
        reasoning_field: str = "",
        upstream: str = "",
    ):
        self.answer_of, self.reasoning_field = answer_of, reasoning_field
        self.upstream = upstream.rstrip("/")
        self.script = {k: list(v) for k, v in (script or {}).items()}
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> StubAPI:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def next_reply(self, prompt: str) -> str:
        with self.lock:
            for key, replies in self.script.items():
                if key in prompt and replies:
                    return replies.pop(0)
        return "ok"

    def completion(self, payload: dict[str, Any]) -> dict[str, Any]:
        prompt = payload["messages"][-1]["content"]
        answer = f"So the answer is \\boxed{{{self.answer_of(prompt)}}}."
        message: dict[str, Any] = {"role": "assistant", "content": answer}
        if self.reasoning_field:
            message[self.reasoning_field] = f"Thinking about seed {payload.get('seed')}."
        return {
            "id": "stub",
            "object": "chat.completion",
            "model": payload["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {
                "prompt_tokens": len(prompt.split()),
                "completion_tokens": 7,
                "total_tokens": len(prompt.split()) + 7,
                "prompt_tokens_details": {"cached_tokens": 2},
            },
        }


def _handler(stub: StubAPI) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:  # quiet test output
            pass

        def _send(
            self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
        ) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)

        def _forward(self, payload: dict[str, Any]) -> None:
            import urllib.error
            import urllib.request

            req = urllib.request.Request(
                stub.upstream + "/chat/completions",
                data=json.dumps(payload).encode(),
                headers={"Content-Type": "application/json"},
            )
            try:
                with urllib.request.urlopen(req, timeout=600) as r:
                    self._send(r.status, json.loads(r.read()))
            except urllib.error.HTTPError as e:
                self._send(e.code, json.loads(e.read() or b"{}"))

        def do_POST(self) -> None:  # noqa: N802 - the stdlib's name
            payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            prompt = payload["messages"][-1]["content"]
            reply = stub.next_reply(prompt)
            with stub.lock:
                stub.requests.append(
                    {
                        "headers": dict(self.headers),
                        "payload": payload,
                        "time": time.monotonic(),
                        "reply": reply,
                    }
                )
            kind, _, arg = reply.partition(":")
            if kind == "ok" and stub.upstream:
                self._forward(payload)
            elif kind == "ok":
                self._send(200, stub.completion(payload))
            elif kind == "429":
                self._send(429, {"error": {"message": "rate limited"}}, {"Retry-After": arg or "1"})
            elif kind in ("400", "401", "500", "503"):
                self._send(int(kind), {"error": {"message": f"stub says {kind}"}})
            elif kind == "hang":
                time.sleep(float(arg))
            elif kind == "drop":
                self.close_connection = True
                self.connection.close()

    return Handler
