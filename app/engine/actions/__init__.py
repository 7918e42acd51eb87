"""Actions a step `uses`: their files fetched on the host (never run there) and their action.yml read.

    cache = ActionCache(settings)                          # one per process (SPINDLE_ACTIONS_*)
    async with cache.resolver() as resolver:               # one per run: RunResolver
        action = await resolver.fetch(uses)                # uses: RepositoryAction → FetchedAction
        action.directory                                   # the repository's files at action.commit
        action.action_directory                            # ... at the path the reference names
        action.definition                                  # ActionDefinition: name, inputs, outputs, runs
    load_definition(directory, path, action=text)          # action.yml in a directory on the host
    parse_definition(source, action=text, file=...)        # action.yml's text (e.g. read in a container)

`./path` (LocalAction) is in the job's workspace and `docker://image` (DockerImage) is an image:
neither is fetched. `resolver.fetch` raises ActionError (exceptions.py); its message names the
action and says what a user can do about it. The runner streams `directory` into the job's
container without following links (tarfile.add keeps them as links).

    resolve.py      ActionCache, RunResolver, FetchedAction: where from, which commit, the cache's locks
    store.py        the cache on disk: entries by (url, commit), refs.json, LRU eviction
    git.py          ls-remote, shallow fetch and checkout, in git's empty environment
    definition.py   ActionDefinition and its parts (NodeRuns, CompositeRuns, DockerRuns)
    exceptions.py   ActionError → ActionUnavailable | MissingDefinition | InvalidDefinition
"""

from app.engine.actions.definition import (
    ActionDefinition,
    ActionInput,
    ActionOutput,
    CompositeRuns,
    DockerRuns,
    NodeRuns,
    Runs,
    load_definition,
    parse_definition,
)
from app.engine.actions.exceptions import ActionError, ActionUnavailable, InvalidDefinition, MissingDefinition
from app.engine.actions.resolve import ActionCache, FetchedAction, RunResolver

__all__ = [
    "ActionCache",
    "ActionDefinition",
    "ActionError",
    "ActionInput",
    "ActionOutput",
    "ActionUnavailable",
    "CompositeRuns",
    "DockerRuns",
    "FetchedAction",
    "InvalidDefinition",
    "MissingDefinition",
    "NodeRuns",
    "RunResolver",
    "Runs",
    "load_definition",
    "parse_definition",
]
