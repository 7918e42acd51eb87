"""Jobs in containers of a real engine (Podman or Docker), driven through the Docker Engine API.

    handle = await engine.connect(settings)       # find the engine, or start Podman ourselves
    await images.ensure_default_runner_image(handle.docker, settings=settings, progress=log.info)
    await images.ensure_image(handle.docker, ref, progress=run_log)   # a job's image: local, else pulled
    ...
    await handle.close()                          # stops the Podman service if we started it

engine.py finds and starts the engine; images.py gets images (pulled, or built from Debian
packages with mmdebstrap so that no registry is needed to start).
"""
