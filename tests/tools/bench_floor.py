"""The benchmark's floor: the framework's own limit for sensorstats' work shape.

    python tests/tools/bench_floor.py --port 8090 --threads 16

A bare falcon app served by waitress, the same stack and thread count as the
service, doing only what no implementation of the contract can skip:
``POST /data`` reads the body (gunzips it if it says gzip) and parses it
as JSON, then answers 204;
``GET /statistics/{id}`` answers a fixed statistics document of the real
size; ``GET /healthz`` answers 204. `tests/tools/bench.py` compares the service
with this app in the same run, so a ratio near 1 means the service adds
little to what falcon and waitress cost anyway.

Stops on SIGTERM or SIGINT. Stdlib plus the app's own requirements.
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import signal
import sys
from collections.abc import Sequence
from types import FrameType
from typing import Any

import falcon
import waitress

# What the service answers for a sensor with one measurement.
STATISTICS = json.dumps(
    {"last_measurement": "2021-11-09T21:38:09+01:00", "count": 1, "avg": 3.14}
).encode()


class Data:
    """``POST /data``: read and parse the body, keep nothing."""

    def on_post(self, req: falcon.Request, resp: falcon.Response) -> None:
        body = req.bounded_stream.read()
        if req.get_header("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        json.loads(body)
        resp.status = falcon.HTTP_204


class Statistics:
    """``GET /statistics/{sensor_id}``: a fixed document."""

    def on_get(self, req: falcon.Request, resp: falcon.Response, sensor_id: str) -> None:
        resp.data = STATISTICS
        resp.content_type = falcon.MEDIA_JSON


class Health:
    """``GET /healthz``: always ready."""

    def on_get(self, req: falcon.Request, resp: falcon.Response) -> None:
        resp.status = falcon.HTTP_204


def create_app() -> falcon.App[Any, Any]:
    """The floor app, with the service's routes."""
    app = falcon.App()
    app.add_route("/data", Data())
    app.add_route("/statistics/{sensor_id:path}", Statistics())
    app.add_route("/healthz", Health())
    return app


def main(argv: Sequence[str] | None = None) -> int:
    """Serve the floor app on loopback until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=16)
    args = parser.parse_args(argv)

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(0)

    # SystemExit unwinds waitress's loop; the process exits 0 on either signal.
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    # Waitress warns once per request queued behind busy threads; the service
    # summarises those warnings, so writing each one would handicap the floor.
    logging.getLogger("waitress.queue").setLevel(logging.ERROR)
    waitress.serve(
        create_app(),
        host="127.0.0.1",
        port=args.port,
        threads=args.threads,
        # The service's default: waitress's own 100 would refuse the bench's
        # idle connections and wrk's behind them.
        connection_limit=2048,
        ident="floor",
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
