"""Self-service from Tangled's records on Jetstream: spindle members, repos, collaborators."""
