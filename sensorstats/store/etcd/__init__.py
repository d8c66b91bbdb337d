"""The etcd store: the only package that speaks to etcd.

Theory of operation. Any number of instances share one etcd cluster, the
system of record; no instance keeps state another would need.

**What "consistent across instances" means.** Through any instance, a GET
sees every POST and DELETE acknowledged before the GET arrived
(linearizable reads and writes); a POST is acknowledged only once etcd has
committed it; and a sensor's record is bit-identical whatever the order of
arrival, the split into requests or the instance that took them, because
merging statistics is exact integer arithmetic (`sensorstats.core.stats`).
A request that cannot be decided in time gets a 503 that says whether it
was not applied or its outcome is unknown; a request with an
``Idempotency-Key`` counts exactly once however often it is retried,
through whichever instances.

**One key per sensor** (`keys`). Each sensor's statistics live under
``<prefix>sensors/<id>``, the id percent-encoded, holding `Stats.encode`.
Request markers live under ``<prefix>requests/``, the markers of keyed
requests under ``<prefix>keys/``; the readiness check reads
``<prefix>healthz``. A DELETE deletes the sensor's key.

**Compare-and-swap transactions** (`txn`). A POST is applied as one
transaction per chunk: *if* every sensor key still has the mod revision
this instance last saw (0 for a key believed absent) *and* the chunk's
request marker does not exist, *then* put the merged records and the
marker, *else* read all those keys and the marker. Losing a race costs one
round trip, which also brings the current values. Each instance remembers
the last revision and record of about `store.CACHE_SIZE` recently written
sensors (`cache`), so a first attempt usually commits; a stale memory costs
one extra round trip, never correctness. A refused compare is retried at
once with the values it read, a few times, then with capped, jittered
back-off, and nothing is sent past the request's write deadline
(`writes`).

**Lost answers** (`writes`). A timeout or UNAVAILABLE may hide a commit, so
a batch is never re-applied on a guess: each chunk carries a request marker
(an id drawn once per instance plus a counter: unique across instances and
restarts) that every attempt requires absent and writes when it commits, so
at most one attempt ever commits.

**Combining** (`combining`, `gathering`). Concurrent POSTs in one instance
share transactions (group commit): one transaction is in flight at a time,
carrying the merged deltas of every write that queued meanwhile, each with
its own marker and its own outcome. Writes to a key already in flight wait
for that transaction, so an instance never races itself.

**Reading rounds** (`read_rounds`). Concurrent GETs share linearizable
reads: a GET joins the next round *not yet sent*, and one sender thread
sends the rounds one after the other, each as one read of all its sensors.
A read answers a GET only if it was sent after the GET arrived, so a write
acknowledged before the GET is always seen.

**Calls started on the event loop** (`sensorstats.store.calls`). A GET's
read, and an unkeyed POST's write that fits in one transaction, may be
started by the server's event loop the moment the request is in; the read
joins a round and the write joins group commit like any other, and the
request is answered once the call settles, with no worker thread waiting.

**Keyed exactly-once** (`keyed`). A POST with an ``Idempotency-Key`` leaves
a key marker holding the payload's fingerprint and one marker per sensor,
written by the very transaction that puts that sensor's record, for the
idempotency window. A retry, split into transactions alike or otherwise,
applies exactly the sensors no marker covers, and a different payload under
the same key is refused (422) before anything is written.

**Chunking.** etcd allows ``--max-txn-ops`` (128) operations per list of a
transaction and ``--max-request-bytes`` (1.5 MiB) per request. A batch that
needs more is split into chunks of at most ``max_txn_ops - 1`` sensors (the
marker takes one operation), ``(max_txn_ops - 2) // 2`` with an
Idempotency-Key (a marker per sensor and two guards), and about 1 MiB, in
sorted key order, so two instances updating overlapping large batches take
the keys in the same order and cannot starve each other. Each chunk is
atomic; the batch as a whole is not: a reader may see some chunks before
others, and when a later chunk fails the earlier ones stay applied, which
the 503's detail says. Retrying such a request without a key counts them
twice; with one, the retry applies exactly the rest. Batches of up to 127
sensors without a key, 63 with one (any number of measurements), are always
atomic.

**Records across releases** (`sensorstats.core.stats`). An instance that
meets a record of a version it cannot read answers 503 for GET and POST
alike and never rewrites it: a write compares the revision it read, and it
reads nothing it cannot decode. So a new record version is rolled out
readers first, over two releases.

**The client** (`client`). Calls to any member, with a deadline on every
call and failover that never locks the service out of a cluster that is
back; every gRPC failure becomes a `StoreUnavailable` with a specific
reason (no leader, deadline exceeded, database space exceeded, refused
access, ...), a 503, never a 500. `store.EtcdStore.check` is a linearizable
read with a short timeout, since a read needs a quorum and a status call
does not; a full database (NOSPACE) fails writes at once and leaves reads
and readiness alone.

`store` assembles these parts into the `Store`; `bootstrap` is not part of
it: it is how an etcd member of ``kube/`` starts.
"""
