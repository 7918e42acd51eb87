"""`on:`: the events that start a workflow, the filters of push and pull_request, and the
inputs of workflow_dispatch. Other events are kept by name only."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from app.workflows.exceptions import InvalidWorkflow
from app.workflows.filters import EventFilter, parse_filter
from app.workflows.inputs import DispatchInput, parse_inputs

BRANCH_PREFIX = "refs/heads/"
TAG_PREFIX = "refs/tags/"


@dataclass(frozen=True)
class Triggers:
    events: tuple[str, ...]  # every event named, in the file's order
    push: EventFilter | None = None  # None: push is not one of the events
    pull_request: EventFilter | None = None
    # The declared workflow_dispatch inputs; None when the workflow declares none.
    inputs: Mapping[str, DispatchInput] | None = None

    def matches_push(self, *, ref: str, changed_paths: Collection[str] | None = None) -> bool:
        """Whether a push of `ref` (`refs/heads/…` or `refs/tags/…`; any other ref never matches)
        starts the workflow. Tag pushes skip the paths filters, as on GitHub."""
        if self.push is None:
            return False
        if ref.startswith(BRANCH_PREFIX):
            branch = ref.removeprefix(BRANCH_PREFIX)
            return self.push.matches_branch(branch) and self.push.matches_paths(changed_paths)
        if ref.startswith(TAG_PREFIX):
            return self.push.matches_tag(ref.removeprefix(TAG_PREFIX))
        return False

    def matches_pull_request(self, *, base_ref: str, changed_paths: Collection[str] | None = None) -> bool:
        """Whether a pull request into `base_ref` (a branch name, or `refs/heads/…`) starts the
        workflow. Activity types (`types:`) are not looked at."""
        if self.pull_request is None:
            return False
        branch = base_ref.removeprefix(BRANCH_PREFIX)
        return self.pull_request.matches_branch(branch) and self.pull_request.matches_paths(changed_paths)


def event_map(path: str, on: Any) -> dict[str, Any]:
    """`on` as a string, a list of strings or a map → {event: configuration or None}."""
    if isinstance(on, str):
        return {on: None}
    if isinstance(on, list):
        if not on or not all(isinstance(event, str) for event in on):
            raise InvalidWorkflow(path, "`on` as a list must list event names")
        return dict.fromkeys(on)
    if isinstance(on, dict):
        if not on or not all(isinstance(event, str) for event in on):
            raise InvalidWorkflow(path, "`on` as a map must have event names as keys")
        return dict(on)
    raise InvalidWorkflow(path, "`on` must be an event name, a list of event names or a map of events")


def parse_triggers(path: str, events: Mapping[str, Any]) -> Triggers:
    """The typed triggers of an `event_map`."""
    return Triggers(
        events=tuple(events),
        push=parse_filter(path, "push", events["push"]) if "push" in events else None,
        pull_request=(
            parse_filter(path, "pull_request", events["pull_request"], tags=False)
            if "pull_request" in events
            else None
        ),
        inputs=_dispatch_inputs(path, events.get("workflow_dispatch")),
    )


def _dispatch_inputs(path: str, dispatch: Any) -> dict[str, DispatchInput] | None:
    if dispatch is not None and not isinstance(dispatch, dict):
        raise InvalidWorkflow(path, "on.workflow_dispatch must be a map or empty")
    inputs = dispatch.get("inputs") if dispatch is not None else None
    if inputs is None:
        return None
    if not isinstance(inputs, dict):
        raise InvalidWorkflow(path, "on.workflow_dispatch.inputs must be a map of inputs")
    return parse_inputs(path, inputs)
