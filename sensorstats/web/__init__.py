"""The HTTP application: falcon's app, its resources, middleware and problem documents.

The only place route paths and problem types are written. Runs under any
WSGI server; nothing here knows waitress. What a client may send and what
it gets back is the HTTP contract, sensorstats/web/README.md; this is why
the app is built as it is.

**One factory** (`app.create_web`) takes the settings and the store and
wires them into thin resources; the store is the `Store` protocol, so no
resource knows which one it has. The middleware runs in a fixed order:
`telemetry.RequestTelemetry` first, so it sees every request and every
final answer whoever refused it; then `methods.KnownMethods`, so a method
HTTP does not define is 501 before a token or a route is looked at; then,
with tokens configured, `auth.BearerAuth`. Probes, ``/metrics`` and
``/openapi.json`` never need a token: probes and scrapers carry none.

**Validation once.** A POST is prepared by one function, `early.prepare_post`
(media type, content coding, body limit, parsing into per-sensor deltas in
`sensorstats.core`), whether a worker thread serves it or the server's event
loop starts its write; so what is accepted and every error message are the
same either way. A label saying the body is something other than JSON is
refused rather than parsed by surprise, and gzip or deflate is inflated
never beyond the body limit (`sensorstats.core.body`).

**Store calls started early** (`early`). For ``GET /statistics/{id}`` and a
small unkeyed ``POST /data`` the store call starts on the event loop the
moment the request is in, only where the resource would make exactly that
call, and only once every middleware has admitted the request
(`admits_early`: a middleware that cannot say admits nothing early). The
resource then takes the call's outcome instead of calling the store, so a
request is never written twice. Keyed POSTs and bodies over
`early.EARLY_WRITE_MAX_BYTES` are served by a worker, so no batch holds the
loop for long.

**Sensor ids** are compared exactly as sent. Besides non-empty, at most
``SENSORSTATS_MAX_SENSOR_ID`` characters and no control characters,
unpaired surrogates are refused: they cannot be encoded in a URL or a key.
In a path, invalid UTF-8 answers 400 rather than silently becoming U+FFFD,
and an id that could never be posted answers 400 on GET and DELETE.

**Errors are types** (`sensorstats.core.errors`), mapped to RFC 9457 problem
documents in one place (`problems`). Our own problem types are URNs
(``urn:sensorstats:problem:invalid-batch``, ...); plain HTTP errors use
``about:blank``. Every ``detail`` says what was wrong and what to send
instead, never Python's or waitress's words; a rejected batch lists each
bad field, at most `sensorstats.core.batch.MAX_REPORTED_ERRORS`, and the
detail gives the total.

**HEAD and OPTIONS.** HEAD is served wherever GET is, by the GET handler:
falcon drops the body and keeps the headers, ``Content-Length`` included.
OPTIONS answers 204 with ``Allow`` (falcon's own default answers 200);
``OPTIONS *`` answers 204 with every method served. A 405 lists HEAD and
OPTIONS in its ``Allow`` too.

**The OpenAPI document** (`openapi`) is built from the settings, so the
limits it states are this instance's own, and a test holds it and the app
to each other both ways.
"""
