"""The HTTP API and the static front end of `saekit serve` (FastAPI).

Every error is JSON ``{"error": "one line"}``: 400 a bad value (feature out of range, strength
too large, prompt too long), 404 an unknown SAE, feature or job, 422 a malformed body, 503 a
full queue or an index still being built; a bug is a one-line 500 (the traceback goes to the
server's log only). Model work goes through `ServeState.worker`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.middleware.trustedhost import TrustedHostMiddleware

from saekit.serve import catalog
from saekit.serve.catalog import NotFound
from saekit.serve.model_jobs import feature_info, graph_job, inspect_text, rank_by_token, steer_job
from saekit.serve.state import NotReady, ServeState
from saekit.serve.worker import Busy, Job

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("saekit.serve")


class InspectRequest(BaseModel):
    sae: str
    text: str
    k: int = Field(5, ge=1, le=20)


class SteerFeature(BaseModel):
    feature: int
    strength: float = Field(8.0, allow_inf_nan=False)


class SteerRequest(BaseModel):
    sae: str
    prompt: str
    features: list[SteerFeature] = Field(min_length=1)
    mode: str = "add"
    units: str = "raw"
    positions: str = "all"
    max_new_tokens: int | None = Field(None, ge=1)  # default: 24, or the server's limit
    sample: bool = False
    temperature: float = Field(1.0, gt=0, allow_inf_nan=False)
    seed: int = 0


class GraphRequest(BaseModel):
    prompt: str
    max_feature_nodes: int = Field(400, ge=1, le=20_000)


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def create_app(state: ServeState, allowed_hosts: list[str] | None = None) -> FastAPI:
    """The FastAPI application over ``state``.

    ``allowed_hosts``: the only ``Host`` headers answered (others get 400), so a web page
    cannot reach a localhost server through a DNS name it controls (DNS rebinding)."""
    app = FastAPI(
        title="saekit serve", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json"
    )
    if allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts)
    app.state.serve = state
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    _add_error_handlers(app)
    limits = state.limits

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/status")
    def status() -> dict:
        return state.status()

    @app.get("/api/saes/{name}/features")
    def features(
        name: str,
        q: str = "",
        token: str | None = None,
        min_density: float | None = Query(None, ge=0, le=1),
        max_density: float | None = Query(None, ge=0, le=1),
        sort: str = "feature",
        desc: bool = False,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=500),
    ) -> dict:
        entry = state.entry(name)
        state.require_ready()
        ranked = None
        if token:
            job = state.worker.run("search", lambda _job: rank_by_token(entry, state.lm, token))
            ranked = _result(job)
        rows = catalog.search(
            entry, q=q, min_density=min_density, max_density=max_density, ranked=ranked,
            sort=sort, descending=desc,
        )  # fmt: skip
        return {"total": len(rows), "offset": offset, "rows": rows[offset : offset + limit]}

    @app.get("/api/saes/{name}/features/{feature}")
    def feature(name: str, feature: int) -> dict:
        entry = state.entry(name)
        state.require_ready()
        with state.tokenizer() as tokenizer:
            return catalog.feature_detail(entry, feature, tokenizer)

    @app.post("/api/inspect")
    def inspect(req: InspectRequest) -> dict:
        entry = state.entry(req.sae)
        state.require_ready()
        state.check_text(req.text, limits.max_prompt_tokens, "text")
        job = state.worker.run(
            "inspect", lambda _job: inspect_text(entry, state.lm, req.text, req.k)
        )
        return _result(job)

    @app.post("/api/steer", status_code=202)
    def steer(req: SteerRequest) -> dict:
        from saekit.steering import Intervention
        from saekit.steering.cli import parse_positions
        from saekit.steering.interventions import sae_source

        entry = state.entry(req.sae)
        state.require_ready()
        state.check_text(req.prompt, limits.max_prompt_tokens)
        new_tokens = req.max_new_tokens or min(24, limits.max_new_tokens)
        if new_tokens > limits.max_new_tokens:
            raise ValueError(
                f"max_new_tokens {req.max_new_tokens} is above this server's limit {limits.max_new_tokens}"
            )
        if len(req.features) > limits.max_features:
            raise ValueError(f"{len(req.features)} features; at most {limits.max_features} at once")
        for item in req.features:
            if abs(item.strength) > limits.max_strength:
                raise ValueError(
                    f"strength {item.strength:g} of feature {item.feature} is outside "
                    f"[-{limits.max_strength:g}, {limits.max_strength:g}]"
                )
        typical = None
        if req.units == "act":
            stats = entry.stats
            typical = {
                f.feature: float(stats.mean_act_F[entry.check_feature(f.feature)])
                for f in req.features
            }
        values = {f.feature: f.strength for f in req.features}
        spec = Intervention(
            entry.sae, values, mode=req.mode, units=req.units,
            positions=parse_positions(req.positions), typical_acts=typical,
        )  # fmt: skip
        settings = dict(
            max_new_tokens=new_tokens, do_sample=req.sample, temperature=req.temperature,
            seed=req.seed, prepend_bos=sae_source(entry.sae).prepend_bos,
        )  # fmt: skip
        job = state.worker.submit(
            "steer", lambda job: steer_job(job, state.lm, spec, req.prompt, settings)
        )
        return {"job": job.id}

    @app.post("/api/graph", status_code=202)
    def graph(req: GraphRequest) -> dict:
        state.require_ready()
        if state.replacement is None:
            raise ValueError(f"attribution graphs are not available: {state.graph_reason}")
        state.check_text(req.prompt, limits.max_graph_tokens)
        entries = [e for e in state.entries.values() if e.is_transcoder]
        info = feature_info(entries, state.layer_of)
        job = state.worker.submit(
            "graph", lambda job: graph_job(job, state.replacement, req.prompt, info,
                                           max_feature_nodes=req.max_feature_nodes),
        )  # fmt: skip
        return {"job": job.id}

    @app.get("/api/jobs/{job_id}")
    def job_state(job_id: str, wait: float = Query(0, ge=0, le=600)) -> JSONResponse:
        job = _job(state, job_id)
        if wait:
            job.wait(wait)
        if job.status == "error":
            return _error(job.error_status, job.error or "failed")
        body = job.summary()
        if job.status == "done" and job.kind != "graph":
            body["result"] = job.result
        return JSONResponse(body)

    @app.get("/api/jobs/{job_id}/events")
    async def job_events(job_id: str) -> StreamingResponse:
        job = _job(state, job_id)

        async def stream():
            yield _sse({"type": "queued", "ahead": state.worker.waiting()})
            i, idle = 0, 0.0
            while True:
                events = job.events[i:]
                for event in events:
                    if event["type"] == "done" and job.kind == "graph":
                        event = {"type": "done", "result": {"viewer": f"/api/jobs/{job.id}/viewer"}}
                    yield _sse(event)
                    if event["type"] in ("done", "error"):
                        return
                i += len(events)
                idle = 0.0 if events else idle + 0.05
                if idle >= 15:
                    yield ": keep-alive\n\n"
                    idle = 0.0
                await asyncio.sleep(0.05)

        headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    @app.get("/api/jobs/{job_id}/viewer", response_class=HTMLResponse)
    def viewer(job_id: str) -> HTMLResponse:
        job = _job(state, job_id)
        if job.kind != "graph" or job.status != "done":
            raise NotFound(f"job {job_id} holds no finished attribution graph")
        return HTMLResponse(job.result["html"])

    return app


def _job(state: ServeState, job_id: str) -> Job:
    job = state.worker.get(job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id!r} (finished jobs are kept for a while only)")
    return job


def _result(job: Job):
    if job.status == "error":
        raise _JobFailed(job.error_status, job.error or "failed")
    return job.result


class _JobFailed(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _sse(event: dict) -> str:
    return f"data: {json.dumps(event)}\n\n"


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, err: RequestValidationError) -> JSONResponse:
        parts = []
        for e in err.errors():
            if e.get("type") == "json_invalid":
                parts.append(f"the request body is not valid JSON (at character {e['loc'][-1]})")
                continue
            where = ".".join(str(x) for x in e.get("loc", ()) if x != "body")
            parts.append(
                f"{where}: {e.get('msg', 'invalid')}" if where else e.get("msg", "invalid")
            )
        return _error(422, "; ".join(parts) or "invalid request")

    handlers = {NotFound: 404, ValueError: 400, Busy: 503, NotReady: 503, TimeoutError: 503}
    for cls, code in handlers.items():

        async def handle(_request: Request, err: Exception, code: int = code) -> JSONResponse:
            text = err.args[0] if isinstance(err, LookupError) and err.args else str(err)
            return _error(code, " ".join(str(text).split()))

        app.add_exception_handler(cls, handle)

    @app.exception_handler(_JobFailed)
    async def failed(_request: Request, err: _JobFailed) -> JSONResponse:
        return _error(err.status, str(err))

    @app.exception_handler(Exception)
    async def bug(_request: Request, err: Exception) -> JSONResponse:
        log.error("request failed: %r", err)
        return _error(500, f"internal error: {type(err).__name__} (details in the server log)")
