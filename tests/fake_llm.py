"""A tiny OpenAI-compatible HTTP server on 127.0.0.1 for the autointerp tests (no network)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class FakeServer:
    """Serves /v1/models and /v1/chat/completions; ``script`` holds (status, headers, body)
    replies given first, then every chat request gets ``answer``."""

    def __init__(self, models=("fake-model",), answer="[1, 0]", delay=0.0, logprobs=None):
        self.models, self.answer, self.delay, self.logprobs = list(models), answer, delay, logprobs
        self.script: list[tuple[int, dict, str]] = []
        self.requests: list[dict] = []
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _send(self, status, body, headers=None):
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                try:
                    self.wfile.write(data)
                except BrokenPipeError:  # the client timed out and left
                    pass

            def do_GET(self):
                if self.path == "/v1/models":
                    self._send(200, {"data": [{"id": m} for m in fake.models]})
                else:
                    self._send(404, {"detail": "not found"})

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with fake.lock:
                    fake.requests.append(body | {"auth": self.headers.get("Authorization")})
                    scripted = fake.script.pop(0) if fake.script else None
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    time.sleep(fake.delay)
                    if scripted:
                        return self._send(*scripted[::2], scripted[1])
                    if body["model"] not in fake.models:
                        return self._send(404, {"detail": f"model {body['model']} not found"})
                    text = fake.answer(body) if callable(fake.answer) else fake.answer
                    choice = {"message": {"role": "assistant", "content": text}}
                    if fake.logprobs and body.get("logprobs"):
                        choice["logprobs"] = {"content": fake.logprobs}
                    usage = {"prompt_tokens": 11, "completion_tokens": 3}
                    self._send(200, {"choices": [choice], "usage": usage})
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
