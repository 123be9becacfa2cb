"""`serve`: start-up wiring, the processes, the listeners and their connection limits, TLS,
routes, metrics, logs and the table feed between processes. Decides nothing about pods: it
hands each review to `core.decision`."""
