"""`python -m service [--bootstrap]`: serve with uvicorn (uvloop + httptools), settings from the env.

--bootstrap runs the demo initialisation (service.bootstrap) first, in the same process, so an
embedded Redis started for it is the one the service then uses (`make run`).
"""
from __future__ import annotations

import argparse
import logging

import uvicorn

from service.app import create_app
from service.malloc_tuning import keep_freed_memory
from service.settings import Settings


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m service", description=__doc__)
    ap.add_argument("--bootstrap", action="store_true", help="run the demo bootstrap before serving")
    ap.add_argument("--data", default=None, help="bootstrap: synthetic data directory (default var/demo_data)")
    ap.add_argument("--log-level", default="info")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = Settings()
    keep_freed_memory(settings.malloc_keep_mb)
    if args.bootstrap:
        from pathlib import Path

        from service.bootstrap import DEFAULT_DATA, run_or_exit

        run_or_exit(settings, Path(args.data) if args.data else DEFAULT_DATA)  # the embedded Redis keeps its data dir, so the server below sees it
    serve(settings, log_level=args.log_level)


def uvicorn_config(settings: Settings, log_level: str = "info", app=None) -> uvicorn.Config:
    """The server's configuration from the settings (the tests serve real sockets with it too)."""
    return uvicorn.Config(app if app is not None else create_app(settings), host=settings.host, port=settings.port,
                          loop="uvloop", http="httptools", log_level=log_level, access_log=False, lifespan="on",
                          limit_concurrency=settings.max_connections,
                          timeout_graceful_shutdown=settings.shutdown_timeout_s)


def serve(settings: Settings, log_level: str = "info") -> None:
    uvicorn.Server(uvicorn_config(settings, log_level)).run()


if __name__ == "__main__":
    main()
