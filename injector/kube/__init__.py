"""Talking to the API server: the client's configuration, raw JSON list/watch/get calls, the
pacing of our own requests, and the Events we post about ServiceAccounts. Knows nothing of
the identity store or the HTTP server."""
