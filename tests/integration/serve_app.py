"""Entry point of a serving subprocess for the tests: ``serve_app.py TRACKING_URI MODEL_NAME
LOG_ROOT SETTINGS_JSON`` (the serving settings, e.g. ``{"reload_interval_s": 0.2}``).

Binds a free port on 127.0.0.1 itself, prints ``PORT <n>`` on stdout, then serves the champion of
MODEL_NAME until killed. Only the tests use it.
"""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import uvicorn

from driftloop.adapters.registry import Registry
from driftloop.config.settings import ServingSettings
from driftloop.serving.app import create_app

# The test challengers' file formats (tests.support.rollout_models registers them on import).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.support import rollout_models  # noqa: F401


def main(argv: list[str]) -> None:
    tracking_uri, model_name, log_root, settings = argv
    cfg = ServingSettings(**{"port": 1, **json.loads(settings)})
    app = create_app(cfg, Registry(tracking_uri, model_name), Path(log_root))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    print(f"PORT {sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main(sys.argv[1:])
