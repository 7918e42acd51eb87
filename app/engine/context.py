"""What a run knows about itself: the `github` context, the standard and TANGLED_* variables.

Trigger metadata (Pipeline.trigger) is read in the shape of Tangled's `sh.tangled.pipeline`
triggerMetadata: `{"kind", "repo": {"knot", "did", "repo", "defaultBranch"}, "push": {"ref",
"newSha", "oldSha"}, "pullRequest": {"sourceBranch", "targetBranch", "sourceSha", "action"},
"manual": {"inputs": [{"key", "value"}]}}`; a manual trigger may also carry `"ref"`. Anything
missing is simply left out. The TANGLED_* names are the ones Tangled's spindle sets
(spindle/models `PipelineEnvVars`).
"""

from __future__ import annotations

import platform
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

EVENT_NAMES = {"manual": "workflow_dispatch", "push": "push", "pull_request": "pull_request"}
_DIR_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Workspace:
    """Where a job's files are, as paths inside its container: GitHub's layout for container jobs
    (the workspace under /__w, HOME in /github/home, the tool cache in /__t)."""

    workspace: str  # GITHUB_WORKSPACE: /__w/<repo>/<repo>; the checkout goes here
    temp: str = "/__w/_temp"  # RUNNER_TEMP: step scripts, file commands
    home: str = "/github/home"
    tool_cache: str = "/__t"
    event_path: str = "/github/workflow/event.json"

    @classmethod
    def for_repo(cls, repo_name: str) -> Workspace:
        name = _DIR_SAFE.sub("-", repo_name).strip(".-") or "repo"
        return cls(workspace=f"/__w/{name}/{name}")

    @property
    def file_commands(self) -> str:
        return f"{self.temp}/_runner_file_commands"

    @property
    def directories(self) -> tuple[str, ...]:
        """What exists, empty, before the first step."""
        return (
            self.workspace,
            self.file_commands,
            self.home,
            self.tool_cache,
            self.event_path.rsplit("/", 1)[0],
        )


@dataclass(frozen=True)
class RunSpec:
    """One workflow run, as the runner needs it (built from the Pipeline and WorkflowRun rows)."""

    run_id: int
    workflow: str  # the file's stem
    path: str  # .github/workflows/<file>
    source: str
    inputs: Mapping[str, str]
    knot: str
    pipeline_rkey: str
    pipeline_uri: str
    repo_did: str
    repo_name: str
    sha: str
    actor: str | None
    trigger_kind: str  # manual | push | pull_request
    trigger: Mapping[str, Any] = field(default_factory=dict)
    clone_url: str = ""
    knot_url: str = ""
    # `secrets.*` of this run (app.secrets.service.for_run); never in a repr or a log.
    secrets: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def event_name(self) -> str:
        return EVENT_NAMES.get(self.trigger_kind, self.trigger_kind)

    @property
    def repository(self) -> str:
        return f"{self.repo_did}/{self.repo_name}"

    def _section(self, key: str) -> Mapping[str, Any]:
        value = self.trigger.get(key) if isinstance(self.trigger, Mapping) else None
        return value if isinstance(value, Mapping) else {}

    @property
    def ref(self) -> str:
        """The full ref: the pushed ref, the PR's source branch, or for a manual trigger the ref it
        named, else the commit id itself (a manual trigger is for a commit, not a branch)."""
        push, pr = self._section("push"), self._section("pullRequest")
        if self.trigger_kind == "push" and isinstance(push.get("ref"), str):
            return str(push["ref"])
        if self.trigger_kind == "pull_request" and isinstance(pr.get("sourceBranch"), str):
            return "refs/heads/" + str(pr["sourceBranch"])
        ref = self.trigger.get("ref") if isinstance(self.trigger, Mapping) else None
        if isinstance(ref, str) and ref.startswith("refs/"):
            return ref
        return self.sha

    @property
    def ref_name(self) -> str:
        ref = self.ref
        for prefix in ("refs/heads/", "refs/tags/"):
            if ref.startswith(prefix):
                return ref[len(prefix) :]
        return ref

    @property
    def ref_type(self) -> str:
        if self.ref.startswith("refs/tags/"):
            return "tag"
        return "branch" if self.ref.startswith("refs/heads/") else ""

    def event_payload(self) -> dict[str, Any]:
        """The JSON at GITHUB_EVENT_PATH (and `github.event`)."""
        event: dict[str, Any] = {
            "inputs": dict(self.inputs),
            "ref": self.ref,
            "sha": self.sha,
            "repository": {
                "full_name": self.repository,
                "name": self.repo_name,
                "owner": {"login": self.repo_did},
                "clone_url": self.clone_url,
                "default_branch": self._section("repo").get("defaultBranch"),
            },
            "sender": {"login": self.actor or self.repo_did},
            "pipeline": self.pipeline_uri,
        }
        push, pr = self._section("push"), self._section("pullRequest")
        if self.trigger_kind == "push" and push:
            event.update(before=push.get("oldSha"), after=push.get("newSha"))
        if self.trigger_kind == "pull_request" and pr:
            event["action"] = pr.get("action")
            event["pull_request"] = {
                "head": {"ref": pr.get("sourceBranch"), "sha": pr.get("sourceSha")},
                "base": {"ref": pr.get("targetBranch")},
            }
        return event

    def tangled_env(self) -> dict[str, str]:
        """The TANGLED_* variables Tangled's own spindle gives every step."""
        repo = self._section("repo")
        env = {
            "TANGLED_PIPELINE_ID": self.pipeline_uri,
            "TANGLED_PIPELINE_KIND": self.trigger_kind,
            "TANGLED_REPO_KNOT": self.knot,
            "TANGLED_REPO_DID": self.repo_did,
            "TANGLED_REPO_NAME": self.repo_name,
            "TANGLED_REPO_URL": self.clone_url,
            # Tangled sets these for push and PR triggers; a manual trigger here is for a commit too.
            "TANGLED_SHA": self.sha,
            "TANGLED_COMMIT_SHA": self.sha,
        }
        if isinstance(repo.get("defaultBranch"), str):
            env["TANGLED_REPO_DEFAULT_BRANCH"] = repo["defaultBranch"]
        if self.ref.startswith("refs/"):
            env.update(TANGLED_REF=self.ref, TANGLED_REF_NAME=self.ref_name, TANGLED_REF_TYPE=self.ref_type)
        pr = self._section("pullRequest")
        if self.trigger_kind == "pull_request" and pr:
            for key, name in (
                ("sourceBranch", "TANGLED_PR_SOURCE_BRANCH"),
                ("targetBranch", "TANGLED_PR_TARGET_BRANCH"),
                ("sourceSha", "TANGLED_PR_SOURCE_SHA"),
                ("action", "TANGLED_PR_ACTION"),
            ):
                if isinstance(pr.get(key), str):
                    env[name] = pr[key]
        if self.trigger_kind == "manual":
            for key, value in self.inputs.items():
                env["TANGLED_INPUT_" + key.upper().replace("-", "_")] = value
        return env


def runner_arch() -> str:
    machine = platform.machine().lower()
    return {"x86_64": "X64", "amd64": "X64", "aarch64": "ARM64", "arm64": "ARM64"}.get(
        machine, machine.upper()
    )


def github_context(
    spec: RunSpec, *, workflow_name: str, job_id: str, workspace: Workspace | None
) -> dict[str, Any]:
    """The `github` context of one job instance (no workspace yet while deciding whether it runs)."""
    pr = spec._section("pullRequest")
    return {
        "action": "",
        "actor": spec.actor or spec.repo_did,
        "triggering_actor": spec.actor or spec.repo_did,
        "event_name": spec.event_name,
        "event": spec.event_payload(),
        "sha": spec.sha,
        "ref": spec.ref,
        "ref_name": spec.ref_name,
        "ref_type": spec.ref_type,
        "head_ref": pr.get("sourceBranch", "") if spec.trigger_kind == "pull_request" else "",
        "base_ref": pr.get("targetBranch", "") if spec.trigger_kind == "pull_request" else "",
        "repository": spec.repository,
        "repository_owner": spec.repo_did,
        "repositoryUrl": spec.clone_url,
        "server_url": spec.knot_url,
        "run_id": str(spec.run_id),
        "run_number": str(spec.run_id),
        "run_attempt": "1",
        "workflow": workflow_name,
        "workflow_ref": f"{spec.repository}/{spec.path}@{spec.ref}",
        "job": job_id,
        "workspace": workspace.workspace if workspace else "",
        "token": "",
    }


def runner_context(workspace: Workspace) -> dict[str, Any]:
    return {
        "os": "Linux",
        "arch": runner_arch(),
        "name": "spindle",
        "environment": "self-hosted",
        "temp": workspace.temp,
        "tool_cache": workspace.tool_cache,
        "debug": "",
    }


def standard_env(spec: RunSpec, github: Mapping[str, Any], workspace: Workspace) -> dict[str, str]:
    """Variables every step of the job instance gets before any `env:` of the workflow."""
    env = {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_WORKSPACE": workspace.workspace,
        "GITHUB_SHA": spec.sha,
        "GITHUB_REF": spec.ref,
        "GITHUB_REF_NAME": spec.ref_name,
        "GITHUB_REF_TYPE": spec.ref_type,
        "GITHUB_REPOSITORY": spec.repository,
        "GITHUB_REPOSITORY_OWNER": spec.repo_did,
        "GITHUB_EVENT_NAME": spec.event_name,
        "GITHUB_EVENT_PATH": workspace.event_path,
        "GITHUB_RUN_ID": str(spec.run_id),
        "GITHUB_RUN_NUMBER": str(spec.run_id),
        "GITHUB_RUN_ATTEMPT": "1",
        "GITHUB_JOB": str(github["job"]),
        "GITHUB_WORKFLOW": str(github["workflow"]),
        "GITHUB_WORKFLOW_REF": str(github["workflow_ref"]),
        "GITHUB_ACTOR": str(github["actor"]),
        "GITHUB_TRIGGERING_ACTOR": str(github["triggering_actor"]),
        "GITHUB_SERVER_URL": spec.knot_url,
        "RUNNER_OS": "Linux",
        "RUNNER_ARCH": runner_arch(),
        "RUNNER_NAME": "spindle",
        "RUNNER_ENVIRONMENT": "self-hosted",
        "RUNNER_TEMP": workspace.temp,
        "RUNNER_TOOL_CACHE": workspace.tool_cache,
    }
    if spec.trigger_kind == "pull_request":
        env["GITHUB_HEAD_REF"] = str(github["head_ref"] or "")
        env["GITHUB_BASE_REF"] = str(github["base_ref"] or "")
    env.update(spec.tangled_env())
    return env
