"""Serving: the registry's champion behind ``/predict``, with feedback, health and metrics.

The parts, each readable and testable alone:

- ``app``: the FastAPI app wired from the parts below (``create_app``) and ``run_server``;
- ``handlers``: the HTTP endpoints, thin over the prediction service, sharing one object;
- ``service``: the prediction service without HTTP (routing, micro-batching, logs, feedback);
- ``poller``: reads the registry on a schedule, swaps the routing snapshot, publishes it;
- ``snapshot``: the routing snapshot, a pure value (which model answers in which slot);
- ``cache``: the loaded models (load, warm-up, eviction) and the model source protocol;
- ``batching``: the micro-batcher; ``shadow``: the shadow runner;
- ``contract``, ``parsing``, ``ids``, ``auth``, ``metrics``: the HTTP contract and its limits,
  the hand-written body parsers, request ids, the bearer token, the Prometheus series.

Only ``app`` and ``handlers`` import FastAPI or Starlette.
"""
