"""Identity: resolving other parties' DIDs, and serving our own did:web document."""

# The fragment PDSes address us by: `atproto-proxy: did:web:<host>#tangled_spindle`.
SERVICE_ID = "tangled_spindle"
