"""Serving the app with waitress: the only package that imports waitress.

Its modules: `limits` (what connections live under), `answers` (the
server's own problem documents), `parser`, `tasks`, `channel` and
`listener` (waitress's classes, each narrowed where needed), `polling`
(the event loop's poll set, kept between turns), `serving` (the event
loop and the drain on SIGTERM).

Waitress reads and writes every connection on one event loop and runs the
application in a pool of worker threads. What it does not do by itself, and
where this module does it (each time the narrowest hook waitress offers):

- **Limits** (`ConnectionServer`). Waitress stops accepting at its
  connection limit, so a few hundred idle or slow clients lock out every
  other, probes included. Here the listener always accepts; at the limit a
  new connection displaces the open one that has gone longest without a
  complete request (idle keep-alive, slowloris or lingering), and only if
  every connection has a request in progress is the newcomer closed at once.
  Connections are accepted in batches: waitress takes one per turn of its
  loop, and each turn visits every connection.
  Idle connections close after `idle_timeout`; a request whose line, headers
  and body take longer than `receive_timeout` from its first byte is
  answered 408 (waitress has only the idle timeout, which a slowloris client
  resets with every byte). Request bodies in flight share a `ReceiveBudget`:
  a body the budget cannot cover gets a 503 before it is read, so memory and
  the temporary directory stay bounded however many clients upload at once.
- **Probes on the loop** (`ConnectionServer.add_task`). ``GET`` and ``HEAD``
  of `PROBE_PATHS` are answered on the event loop itself, never queued
  behind worker threads held by slow requests; their handlers must not block
  (`/healthz` reads a cached readiness). So are waitress's own error answers.
  What one connection gets served on the loop is bounded per turn
  (`INLINE_REQUESTS_PER_TURN`, `INLINE_OUTPUT_LIMIT`): pipelined requests
  beyond it wait for a later turn, and for the client to read what it was
  sent, so one client can neither stall the loop nor grow its output without
  bound. Waitress's wait for a channel's output to drain below its high-water
  mark never runs on the loop, which is the thread that would drain it.
- **Store calls started early** (`ConnectionServer.add_task`,
  `KeepAliveTask`). A request the app's `EarlyCalls` starts a call for
  (``GET /statistics/{id}``, a small ``POST /data``) has it started on the
  loop, and once the call is settled the request is served on the loop too,
  like a probe, with the call in its environ: the app takes the outcome and
  never blocks (see `sensorstats.web.early`). No worker thread waits for
  etcd or is woken for these requests at all. Not for a request pipelined
  behind one a worker serves (the worker takes it next), nor while the
  circuit breaker is not closed (`sensorstats.store.breaker`): those call
  the store from a worker.
- **Problem documents** (`ProblemErrorTask`). Malformed HTTP, oversized
  heads and bodies, timeouts: RFC 9457 documents, not waitress's text/plain.
- **Lingering close** (`Channel`). After an error answer the client may
  still be sending; closing with unread data makes the kernel send a reset
  that can destroy the answer in flight (curl and most libraries write
  their whole body before they read). The channel shuts down its sending
  side and discards what arrives for at most `LINGER_SECONDS` or
  `LINGER_BYTES`, then closes. It clears waitress's close flags for this
  rather than overriding ``readable`` and ``writable``: those are asked of
  every busy connection on every turn of the loop.
- **Expect: 100-continue** (`Channel.send_continue`). A request refused on
  its head (a declared length over the limit) gets its answer without a
  ``100 Continue`` first, so the client never uploads the body.
- **Bare LF** (`Parser`). Waitress finds the end of a head only at CRLF CRLF,
  so a request with bare LF line endings waited for more forever; it is
  answered 400 as soon as a bare LF shows up in the head.
- **Keep-alive on 204** (`KeepAliveTask`). Waitress closes every HTTP/1.1
  connection whose response has no Content-Length, 204 and 304 included,
  which have no body to delimit; here they keep the connection open unless
  the client asked to close. While the instance drains, every response
  closes its connection, so keep-alive clients move to other instances.

The body limit is checked on the head: a declared ``Content-Length`` over
it is refused before any of the body is read, a chunked body as soon as its
de-chunked size passes it. Waitress's own limit beneath, 16 times ours,
only bounds the raw bytes of a chunked body with absurd framing, and
answers the same problem document. With the 16 KiB cap on a head
(`HEADER_LIMIT_BYTES`), a connection holds about 2.8 KB idle and 16.5 KB
with a nearly full head, and bodies in flight at most the receive budget.
The price of holding many: waitress's loop asks every open connection what
it wants on every turn, about 0.3 µs each, so 500 idle keep-alive
connections took a quarter of an instance's GET rate. Here the poll set is
kept between turns (`polling.Poller`): a connection that only waits to read
is not asked again until it has an event, and a turn costs what the
connections with something going on cost. Accepting is batched
(`ACCEPT_BATCH`), deadlines are enforced four times a second rather than on
every turn (each time asking every connection again), and the channel adds
no call of its own to a turn.

Deliberately left unanswered: connections displaced at the limit or closed
when idle (as HTTP allows for idle connections), a newcomer when every
connection has a request in progress, and a lingering client that sends
more than `LINGER_BYTES` or for longer than `LINGER_SECONDS` (a reset).

Where waitress offers no hook, the override is the narrowest one, and
``tests/unit/server/test_waitress_names.py`` pins every waitress name relied
on, so an upgrade fails in one place:

- accepting past the limit: `ConnectionServer.readable` and
  ``handle_accept``; the deadlines: its ``maintenance``;
- serving on the loop (waitress always dispatches to threads):
  `ConnectionServer.add_task` keeps probes, error answers and requests with
  a started call back, and the channel serves them once parsing is done;
- refusing a body on its head without ``100 Continue``: `Parser.received`
  and `Channel.send_continue`;
- lingering close: `Channel.handle_close` and ``handle_read``;
- problem documents: `ProblemErrorTask`; bare LF: `Parser`;
- keep-alive on bodiless answers: `KeepAliveTask.build_response_header`,
  which also builds the head waitress would, byte for byte, with less work
  per answer (``tests/unit/server/test_tasks.py`` compares the two);
- an answer's head and body in one send: `KeepAliveTask.write`;
- no wake-up of the loop by the loop itself: `ConnectionServer.pull_trigger`.
"""

from sensorstats.server.serving import Server, ensure_descriptors

__all__ = ["Server", "ensure_descriptors"]
