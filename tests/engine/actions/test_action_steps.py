"""Steps that `uses:` actions, run end to end: the actions served by a real git server over smart
HTTP, fetched by the spindle, run with the job image's node in a real Podman container."""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable

import aiodocker

from app.engine.actions import ActionCache
from app.runs.models import Status
from app.workflows.uses import parse_uses
from tests.engine.conftest import Harness
from tests.support.gitserver import GitServer
from tests.support.knot import TestKnot
from tests.support.podman import PodmanEngine

REPO_DID = "did:plc:alice0000000000000000000"
GREET = """\
name: Greet
inputs:
  who:
    default: world
  event:
    default: ${{ github.event_name }}
outputs:
  said:
    description: what was said
runs:
  using: node20
  pre: pre.js
  main: main.js
  post: post.js
"""
GREET_PRE = """\
const fs = require('fs');
fs.appendFileSync(process.env.GITHUB_STATE, 'from_pre=pre-value\\n');
console.log(`pre for ${process.env.INPUT_WHO}`);
"""
GREET_MAIN = """\
const fs = require('fs');
const env = process.env;
console.log(`main: hello ${env.INPUT_WHO} on ${env.INPUT_EVENT}, state ${env.STATE_from_pre}`);
console.log(`action ${env.GITHUB_ACTION_REPOSITORY}@${env.GITHUB_ACTION_REF} in ${env.GITHUB_ACTION_PATH}`);
console.log(`runner ${env.RUNNER_OS} temp ${env.RUNNER_TEMP} workspace ${env.GITHUB_WORKSPACE}`);
fs.appendFileSync(env.GITHUB_STATE, 'from_main=main-value\\n');
fs.appendFileSync(env.GITHUB_OUTPUT, `said=hello ${env.INPUT_WHO}\\n`);
if (env.INPUT_WHO === 'nobody') process.exit(4);
"""
GREET_POST = """\
const env = process.env;
console.log(`post for ${env.INPUT_WHO}: ${env.STATE_from_pre} ${env.STATE_from_main}`);
"""


def serve_greet(git_server: GitServer) -> str:
    """acme/greet, tagged v1; its commit."""
    repo = git_server.create_repo("acme", "greet")
    sha = repo.commit(
        {"action.yml": GREET, "pre.js": GREET_PRE, "main.js": GREET_MAIN, "post.js": GREET_POST}
    )
    repo.tag("v1")
    return sha


async def test_javascript_action_runs_pre_main_and_post_with_inputs_defaults_outputs_and_state(
    harness: Harness, git_server: GitServer
) -> None:
    serve_greet(git_server)
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: echo first-step
              - id: greet
                uses: acme/greet@v1
                with:
                  who: spindle
              - run: echo "output=${{ steps.greet.outputs.said }}"
              - uses: acme/greet@v1
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    expected_order = [
        "pre for spindle",
        "pre for world",
        "first-step",
        "main: hello spindle on workflow_dispatch, state pre-value",
        "output=hello spindle",
        "main: hello world on workflow_dispatch, state pre-value",
        "post for world: pre-value main-value",
        "post for spindle: pre-value main-value",
    ]
    assert all(line in output for line in expected_order), output
    positions = [output.index(line) for line in expected_order]
    assert positions == sorted(positions)
    assert "action acme/greet@v1 in /__w/_actions/acme/greet/v1" in output
    assert "runner Linux temp /__w/_temp workspace /__w/demo/demo" in output
    lines = await harness.lines(run.id)
    starts = [line.content for line in lines if line.kind == "control" and line.step_status == "start"]
    assert starts == [
        "Pre Run acme/greet@v1",
        "Pre Run acme/greet@v1",
        "Run echo first-step",
        "Run acme/greet@v1",
        'Run echo "output=${{ steps.greet.outputs.said }}"',
        "Run acme/greet@v1",
        "Post Run acme/greet@v1",
        "Post Run acme/greet@v1",
    ]
    # The tag was asked of the server once for the whole run, and the repository fetched once.
    assert len(git_server.commands("ls-refs")) == 1
    assert len(git_server.commands("fetch")) == 1


async def test_post_runs_after_a_failed_main_and_the_run_fails_with_the_step(
    harness: Harness, git_server: GitServer
) -> None:
    serve_greet(git_server)
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - uses: acme/greet@v1
                with:
                  who: nobody
              - run: echo never
        """
    )
    assert run.status is Status.FAILED
    assert run.error == "step 'Run acme/greet@v1' of job 'a' failed with exit code 4"
    output = await harness.output(run.id)
    assert "never" not in output
    assert "post for nobody: pre-value main-value" in output


async def test_composite_action_at_a_tag_uses_a_javascript_action_at_a_commit_and_has_outputs(
    harness: Harness, git_server: GitServer
) -> None:
    greet = serve_greet(git_server)
    composite = git_server.create_repo("acme", "tools")
    composite.commit(
        {
            "setup/action.yml": f"""\
name: Setup
inputs:
  name:
    default: composite-default
outputs:
  combined:
    value: ${{{{ steps.inner.outputs.said }}}}/${{{{ steps.shell.outputs.x }}}}
runs:
  using: composite
  steps:
    - id: shell
      shell: bash
      env:
        FROM_COMPOSITE: yes-${{{{ inputs.name }}}}
      run: |
        echo "composite input=${{{{ inputs.name }}}} env=$FROM_COMPOSITE step-env=$OUTER"
        echo "x=from-shell" >> "$GITHUB_OUTPUT"
        test -f "$GITHUB_ACTION_PATH/action.yml" && echo "has its own action.yml"
        test -f "$GITHUB_ACTION_PATH/../README" && echo "and its repository"
    - id: inner
      uses: acme/greet@{greet}
      with:
        who: ${{{{ inputs.name }}}}
    - if: failure()
      shell: sh
      run: echo never
""",
            "README": "tools\n",
        }
    )
    composite.tag("v2")
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - id: c
                uses: acme/tools/setup@v2
                env:
                  OUTER: outer-value
                with:
                  name: nested
              - run: echo "combined=${{ steps.c.outputs.combined }}"
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "composite input=nested env=yes-nested step-env=outer-value" in output
    assert "has its own action.yml" in output and "and its repository" in output
    assert f"action acme/greet@{greet} in /__w/_actions/acme/greet/{greet}" in output
    assert "main: hello nested on workflow_dispatch, state undefined" in output
    assert "combined=hello nested/from-shell" in output
    assert "never" not in output
    assert "post for nested: undefined main-value" in output  # a nested action's pre does not run
    assert "spindle: acme/tools/setup@v2: Run acme/greet@" + greet in output


async def test_local_actions_run_from_the_workspace(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  mkdir -p .github/actions/js .github/actions/comp
                  cat > .github/actions/js/action.yml <<'EOF'
                  inputs:
                    word: {required: true}
                  runs: {using: node16, main: index.js}
                  EOF
                  echo 'console.log("local js says " + process.env.INPUT_WORD)' > .github/actions/js/index.js
                  cat > .github/actions/comp/action.yaml <<'EOF'
                  runs:
                    using: composite
                    steps:
                      - uses: ./.github/actions/js
                        with: {word: from-composite}
                      - run: echo "local composite in $GITHUB_ACTION_PATH"
                        shell: bash
                  EOF
              - uses: ./.github/actions/js
                with:
                  word: hi
              - uses: ./.github/actions/comp
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "local js says hi" in output
    assert "local js says from-composite" in output
    assert "local composite in /__w/demo/demo/.github/actions/comp" in output


async def test_offline_mode_runs_actions_from_the_cache_and_fails_what_is_not_there(
    harness: Harness, git_server: GitServer, make_cache: Callable[..., ActionCache]
) -> None:
    serve_greet(git_server)
    async with make_cache(data_dir=harness.settings().data_dir).resolver() as resolver:
        await resolver.fetch(parse_uses("acme/greet@v1", "uses"))  # type: ignore[arg-type]
    git_server.clear_requests()
    await harness.started(actions_url=git_server.url, actions_offline=True)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          cached:
            steps:
              - uses: acme/greet@v1
          missing:
            needs: cached
            steps:
              - uses: acme/greet@v9
        """
    )
    assert run.status is Status.FAILED
    output = await harness.output(run.id)
    assert "main: hello world on workflow_dispatch, state pre-value" in output
    assert "SPINDLE_ACTIONS_OFFLINE forbids asking the server" in (run.error or "")
    assert (run.error or "").startswith("step 'Run acme/greet@v9' of job 'missing': action acme/greet@v9:")
    assert git_server.requests == []


async def test_actions_that_cannot_run_fail_their_step_saying_which_and_why(
    harness: Harness, git_server: GitServer
) -> None:
    git_server.create_repo("acme", "empty").commit({"README": "no action here\n"})
    git_server.create_repo("acme", "old").commit({"action.yml": "runs:\n  using: node10\n  main: a.js\n"})
    git_server.create_repo("acme", "boxed").commit(
        {
            "action.yml": "runs:\n  using: docker\n  image: Dockerfile\n",
            "Dockerfile": "FROM registry.invalid/nobody/nothing:1\n",
        }
    )
    git_server.create_repo("acme", "shell-less").commit(
        {"action.yml": "runs:\n  using: composite\n  steps:\n    - run: echo hi\n"}
    )
    await harness.started(actions_url=git_server.url)
    cases = {
        "unfetchable": ("acme/missing@v1", f"cannot be fetched from {git_server.url}/acme/missing"),
        "undefined": ("acme/empty@main", "no action.yml or action.yaml at the root of its repository"),
        "old": ("acme/old@main", "'node10' is not supported: expected one of node12, node16, node20, node24"),
        "docker": ("acme/boxed@main", "registry.invalid/nobody/nothing:1"),
        "image": ("docker://registry.invalid/nobody/nothing:1", "registry.invalid/nobody/nothing:1"),
        "shell": ("acme/shell-less@main", "a run step of a composite action must name its shell"),
        "local": ("./nowhere", "no action.yml or action.yaml in /__w/demo/demo/nowhere"),
    }
    jobs = "\n".join(
        f"  {job}:\n    steps:\n      - uses: {uses}\n      - run: echo after-{job}\n"
        for job, (uses, _) in cases.items()
    )
    run = await harness.run(f"on: workflow_dispatch\njobs:\n{jobs}")
    assert run.status is Status.FAILED
    assert run.error is not None and run.error.startswith("step 'Run acme/missing@v1' of job 'unfetchable': ")
    lines = [(line.content, line.stream) for line in await harness.lines(run.id) if line.kind == "data"]
    for job, (_, message) in cases.items():
        assert any(message in content and stream == "stderr" for content, stream in lines), job
        assert (f"after-{job}", "stdout") not in lines


async def test_composite_actions_nest_at_most_ten_deep(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  mkdir -p loop
                  printf 'runs:\\n  using: composite\\n  steps:\\n    - uses: ./loop\\n' > loop/action.yml
              - uses: ./loop
        """
    )
    assert run.status is Status.FAILED
    assert "the action ./loop is nested 11 composite actions deep; at most 10 are allowed" in (
        run.error or ""
    )


async def test_a_javascript_action_in_an_image_without_node_fails_saying_so(
    harness: Harness, git_server: GitServer, podman_engine: PodmanEngine
) -> None:
    serve_greet(git_server)
    image = podman_engine.image.replace("spindle-test", "spindle-test-nonode")
    dockerfile = f"FROM {podman_engine.image}\nRUN rm -f /usr/bin/node /usr/bin/nodejs\n".encode()
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as archive:
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        archive.addfile(info, io.BytesIO(dockerfile))
    async with aiodocker.Docker(url=podman_engine.url) as docker:
        await docker.images.build(fileobj=io.BytesIO(context.getvalue()), encoding="identity", tag=image)
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            container: {image}
            steps:
              - uses: acme/greet@v1
        """
    )
    assert run.status is Status.FAILED
    assert (run.error or "").endswith(
        f"the job's image {image} has no node, which the action acme/greet@v1 (runs.using: node20) "
        "needs: use an image with Node.js (the default runner image has it)"
    )


async def test_composite_action_can_check_out_the_runs_commit(
    harness: Harness, git_server: GitServer, knot: TestKnot
) -> None:
    repo = knot.create_repo(REPO_DID, "hello")
    sha = repo.commit({"version.txt": "one\n"})
    git_server.create_repo("acme", "prepare").commit(
        {
            "action.yml": """\
inputs:
  into: {default: src}
runs:
  using: composite
  steps:
    - uses: actions/checkout@v4
      with:
        path: ${{ inputs.into }}
    - shell: bash
      run: echo "checked out $(cat ${{ inputs.into }}/version.txt)"
"""
        }
    )
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - uses: acme/prepare@main
                with: {into: code}
              - run: test -f code/version.txt && echo visible-to-later-steps
        """,
        sha=sha,
        knot=knot.host,
        repo_did=REPO_DID,
        repo_name="hello",
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "checked out one" in output and "visible-to-later-steps" in output


async def test_a_fetch_that_never_ends_counts_against_the_jobs_time(
    harness: Harness, git_server: GitServer
) -> None:
    serve_greet(git_server)
    git_server.hold("fetch")
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            timeout-minutes: 0.05
            steps:
              - uses: acme/greet@v1
        """
    )
    git_server.release()
    assert run.status is Status.TIMEOUT
    assert run.error == "job 'a' timed out after 0.05 minutes"


BOXED_ENTRY = """\
#!/bin/sh
echo "docker main: hello $INPUT_WHO ($1 $2) in $(pwd)"
echo "said=boxed $INPUT_WHO" >> "$GITHUB_OUTPUT"
echo "from_main=boxed-state" >> "$GITHUB_STATE"
echo "from-docker" > "$GITHUB_WORKSPACE/docker-wrote"
"""
BOXED_POST = """\
#!/bin/sh
echo "docker post: $STATE_from_main"
"""


def serve_boxed(git_server: GitServer, base_image: str) -> None:
    """acme/boxed: a Docker action built from its Dockerfile, with a post-entrypoint."""
    git_server.create_repo("acme", "boxed").commit(
        {
            "action.yml": (
                "inputs:\n  who:\n    default: container\n"
                "outputs:\n  said:\n    description: what was said\n"
                "runs:\n  using: docker\n  image: Dockerfile\n"
                "  args: ['${{ inputs.who }}', 'second']\n"
                "  post-entrypoint: sh /post.sh\n"
                "  env:\n    FROM_ACTION: yes\n"
            ),
            "Dockerfile": (
                f"FROM {base_image}\nCOPY entry.sh /entry.sh\nCOPY post.sh /post.sh\n"
                'ENTRYPOINT ["sh", "/entry.sh"]\n'
            ),
            "entry.sh": BOXED_ENTRY,
            "post.sh": BOXED_POST,
        }
    )


async def test_docker_actions_build_run_with_inputs_outputs_state_and_post_and_docker_images_run(
    harness: Harness, git_server: GitServer, podman_engine: PodmanEngine
) -> None:
    serve_boxed(git_server, podman_engine.image)
    git_server.create_repo("acme", "wrapper").commit(
        {
            "action.yml": (
                "outputs:\n  said:\n    value: ${{ steps.inner.outputs.said }}\n"
                "runs:\n  using: composite\n  steps:\n"
                "    - id: inner\n      uses: acme/boxed@main\n      with:\n        who: nested\n"
            )
        }
    )
    await harness.started(actions_url=git_server.url)
    run = await harness.run(
        f"""
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - id: boxed
                uses: acme/boxed@main
                with:
                  who: spindle
              - run: |
                  echo "output=${{{{ steps.boxed.outputs.said }}}}"
                  echo "job sees $(cat docker-wrote)"
              - uses: docker://{podman_engine.image}
                with:
                  entrypoint: sh
                  args: -c "echo image step in $PWD sees $(cat docker-wrote)"
              - id: wrapped
                uses: acme/wrapper@main
              - run: echo "wrapped=${{{{ steps.wrapped.outputs.said }}}}"
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    expected_order = [
        "docker main: hello spindle (spindle second) in /__w/demo/demo",
        "output=boxed spindle",
        "job sees from-docker",
        "image step in /__w/demo/demo sees from-docker",
        "docker main: hello nested (nested second) in /__w/demo/demo",
        "wrapped=boxed nested",
        "docker post: boxed-state",
    ]
    assert all(line in output for line in expected_order), "\n".join(output)
    positions = [output.index(line) for line in expected_order]
    assert positions == sorted(positions)
    assert output.count("docker post: boxed-state") == 2
