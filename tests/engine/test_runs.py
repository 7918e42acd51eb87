"""Workflows run end to end through the Scheduler against a real database and real processes."""

from __future__ import annotations

import json

from app.runs.models import Status
from tests.engine.conftest import SHA, Harness


async def test_passing_workflow_succeeds_with_exit_code_zero_and_tangled_shaped_log(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          build:
            runs-on: ubuntu-latest
            steps:
              - name: Greet
                run: echo "hello from $GITHUB_JOB"
              - run: echo to-stderr >&2
        """
    )
    assert (run.status, run.error, run.exit_code) == (Status.SUCCESS, None, 0)
    assert [e.status for e in await harness.events(run.id)] == [
        Status.PENDING,
        Status.RUNNING,
        Status.SUCCESS,
    ]
    lines = await harness.lines(run.id)
    steps = [(line.step_id, line.step_status, line.content) for line in lines if line.kind == "control"]
    assert steps == [
        (0, "start", "Greet"),
        (0, "end", "Greet"),
        (1, "start", "Run echo to-stderr >&2"),
        (1, "end", "Run echo to-stderr >&2"),
    ]
    data = {(line.step_id, line.stream, line.content) for line in lines if line.kind == "data"}
    assert (0, "stdout", "hello from build") in data
    assert (1, "stderr", "to-stderr") in data
    start = next(line for line in lines if line.step_status == "start")
    assert start.step_command == 'echo "hello from $GITHUB_JOB"'


async def test_failing_step_fails_the_run_with_its_exit_code_and_skips_later_steps(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          test:
            runs-on: ubuntu-latest
            steps:
              - name: Tests
                run: |
                  echo running
                  exit 3
              - name: Never
                run: echo should-not-run
        """
    )
    assert run.status is Status.FAILED
    assert run.exit_code == 3
    assert run.error == "step 'Tests' of job 'test' failed with exit code 3"
    output = await harness.output(run.id)
    assert "Error: Process completed with exit code 3." in output
    assert "should-not-run" not in output
    assert "spindle: step 'Never' of job 'test' skipped: an earlier step failed" in output
    events = await harness.events(run.id)
    assert (events[-1].status, events[-1].exit_code, events[-1].error) == (Status.FAILED, 3, run.error)


async def test_bash_shell_uses_pipefail_but_the_default_shell_does_not(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: false | true
              - run: false | true
                shell: bash
        """
    )
    assert run.status is Status.FAILED
    assert run.error == "step 'Run false | true' of job 'a' failed with exit code 1"
    assert [line.step_id for line in await harness.lines(run.id) if line.step_status == "end"] == [0, 1]


async def test_step_past_its_timeout_is_killed_and_the_run_ends_timeout(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          slow:
            steps:
              - name: Sleep
                run: echo started; sleep 600
                timeout-minutes: 0.02
              - run: echo after
        """
    )
    assert run.status is Status.TIMEOUT
    assert run.error == "step 'Sleep' of job 'slow' timed out after 0.02 minutes"
    output = await harness.output(run.id)
    assert "started" in output and "after" not in output


async def test_job_past_its_timeout_ends_timeout_naming_the_job(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          slow:
            timeout-minutes: 0.02
            steps:
              - run: sleep 600
              - run: echo never
        """
    )
    assert (run.status, run.error) == (Status.TIMEOUT, "job 'slow' timed out after 0.02 minutes")
    assert "never" not in await harness.output(run.id)


async def test_matrix_runs_each_combination_of_include_and_exclude_as_a_named_instance(
    harness: Harness,
) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          build:
            strategy:
              matrix:
                python: ["3.11", "3.12"]
                os: [linux, mac]
                exclude:
                  - os: mac
                    python: "3.11"
                include:
                  - os: linux
                    extra: yes-linux
                  - python: "3.13"
                    os: bsd
            steps:
              - run: >-
                  echo "combo ${{ matrix.python }}/${{ matrix.os }}/${{ matrix.extra }}
                  index=${{ strategy.job-index }}"
        """
    )
    assert run.status is Status.SUCCESS
    output = await harness.output(run.id)
    # Legs run at the same time: their lines come in any order, each with its own index.
    combos = sorted(line for line in output if line.startswith("combo"))
    assert combos == [
        "combo 3.11/linux/yes-linux index=0",
        "combo 3.12/linux/yes-linux index=1",
        "combo 3.12/mac/ index=2",
        "combo 3.13/bsd/ index=3",
    ]
    jobs = [line for line in output if line.startswith("spindle: job ")]
    assert jobs == [
        "spindle: job build (3.11, linux, yes-linux)",
        "spindle: job build (3.12, linux, yes-linux)",
        "spindle: job build (3.12, mac)",
        "spindle: job build (3.13, bsd)",
    ]


async def test_fail_fast_stops_remaining_combinations_and_fail_fast_false_runs_them(harness: Harness) -> None:
    source = """
        on: workflow_dispatch
        jobs:
          t:
            strategy:
              fail-fast: {fail_fast}
              max-parallel: 1
              matrix:
                n: [1, 2, 3]
            steps:
              - run: echo "n=${{{{ matrix.n }}}}"; test ${{{{ matrix.n }}}} != 1
        """
    fast = await harness.run(source.format(fail_fast="true"))
    assert fast.status is Status.FAILED and fast.exit_code == 1
    assert [line for line in await harness.output(fast.id) if line.startswith("n=")] == ["n=1"]
    assert (
        "spindle: t (3) not run: fail-fast: another combination of this job failed"
        in await harness.output(fast.id)
    )

    slow = await harness.run(source.format(fail_fast="false"))
    assert slow.status is Status.FAILED
    label = 'Run echo "n=${{ matrix.n }}"; test ${{ matrix.n }} != 1'
    assert slow.error == f"step '{label}' of job 't (1)' failed with exit code 1"
    assert [line for line in await harness.output(slow.id) if line.startswith("n=")] == ["n=1", "n=2", "n=3"]


async def test_fail_fast_stops_legs_that_are_already_running(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          t:
            strategy:
              matrix:
                n: [1, 2]
            steps:
              - run: |
                  if [ ${{ matrix.n }} = 1 ]; then sleep 1000; fi
                  echo "started ${{ matrix.n }}"
                  [ ${{ matrix.n }} = 1 ] || exit 7
        """
    )
    output = await harness.output(run.id)
    # Leg 2 fails at once; leg 1, which would sleep for 1000 s, is stopped: the run ends failed.
    assert run.status is Status.FAILED and run.exit_code == 7, run.error
    assert "started 2" in output and "started 1" not in output
    assert "Error: the step was cancelled" in output


async def test_outputs_pass_between_steps_and_between_jobs(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          produce:
            outputs:
              version: ${{ steps.v.outputs.version }}
              notes: ${{ steps.v.outputs.notes }}
            steps:
              - id: v
                run: |
                  echo "version=1.2.3" >> "$GITHUB_OUTPUT"
                  {
                    echo 'notes<<END'
                    echo 'line one'
                    echo 'line two'
                    echo END
                  } >> "$GITHUB_OUTPUT"
              - run: echo "same job sees ${{ steps.v.outputs.version }} (${{ steps.v.outcome }})"
          consume:
            needs: produce
            steps:
              - run: |
                  echo "next job sees ${{ needs.produce.outputs.version }} from ${{ needs.produce.result }}"
                  printf '%s\\n' "$NOTES" | sed 's/^/notes: /'
                env:
                  NOTES: ${{ needs.produce.outputs.notes }}
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "same job sees 1.2.3 (success)" in output
    assert "next job sees 1.2.3 from success" in output
    assert ["notes: line one", "notes: line two"] == [line for line in output if line.startswith("notes:")]


async def test_inputs_reach_the_script_through_expressions_env_and_tangled_variables(
    harness: Harness,
) -> None:
    run = await harness.run(
        """
        on:
          workflow_dispatch:
            inputs:
              who: {type: string}
              loud: {type: boolean, default: false}
              level: {type: string, default: low}
        env:
          WHO: ${{ inputs.who }}
        jobs:
          greet:
            steps:
              - run: |
                  echo "expr=${{ inputs.who }} event=${{ github.event.inputs.who }}"
                  echo "env=$WHO tangled=$TANGLED_INPUT_WHO level=${{ inputs.level }}"
                  echo "loud=${{ inputs.loud == true }} typed=${{ inputs.loud }}"
                  sed -n 's/^ *"who": "\\(.*\\)",*$/event-file=\\1/p' "$GITHUB_EVENT_PATH"
        """,
        inputs={"who": "Ada; echo injected", "loud": "true"},
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    # ${{ }} is pasted into the script as text, as on GitHub (here inside double quotes).
    assert "expr=Ada; echo injected event=Ada; echo injected" in output
    assert "env=Ada; echo injected tangled=Ada; echo injected level=low" in output
    assert "loud=true typed=true" in output
    assert "event-file=Ada; echo injected" in output


async def test_if_conditions_with_failure_and_always_pick_the_steps_and_jobs_that_run(
    harness: Harness,
) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          first:
            steps:
              - run: exit 1
              - if: failure()
                run: echo on-failure
              - if: always()
                run: echo always
              - if: success()
                run: echo on-success
              - if: github.event_name == 'workflow_dispatch'
                run: echo implicit-success
          after-failure:
            needs: first
            if: failure()
            steps:
              - run: echo "cleanup job ran, first was ${{ needs.first.result }}"
          after-success:
            needs: first
            steps:
              - run: echo never
          literal-false:
            if: false
            steps:
              - run: echo never
        """
    )
    assert run.status is Status.FAILED
    assert run.error == "step 'Run exit 1' of job 'first' failed with exit code 1"
    output = await harness.output(run.id)
    assert "on-failure" in output and "always" in output
    assert "on-success" not in output and "implicit-success" not in output and "never" not in output
    assert "cleanup job ran, first was failure" in output
    assert "spindle: job 'after-success' skipped: a job it needs did not succeed" in output
    assert "spindle: job 'literal-false' skipped: its if: condition is false" in output


async def test_continue_on_error_lets_the_job_and_run_go_on(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - id: flaky
                run: exit 7
                continue-on-error: true
              - run: echo "outcome=${{ steps.flaky.outcome }} conclusion=${{ steps.flaky.conclusion }}"
          b:
            continue-on-error: ${{ matrix.experimental }}
            strategy:
              matrix:
                experimental: [true]
            steps:
              - run: exit 2
          c:
            needs: [a, b]
            steps:
              - run: echo "c ran after ${{ needs.b.result }}"
        """
    )
    assert (run.status, run.error, run.exit_code) == (Status.SUCCESS, None, 0)
    output = await harness.output(run.id)
    assert "outcome=failure conclusion=success" in output
    assert "c ran after success" in output


async def test_github_env_and_github_path_change_later_steps(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        env:
          FROM_WORKFLOW: workflow
        jobs:
          a:
            steps:
              - run: |
                  mkdir -p "$HOME/bin"
                  printf '#!/bin/sh\\necho tool-ran\\n' > "$HOME/bin/mytool"
                  chmod +x "$HOME/bin/mytool"
                  echo "$HOME/bin" >> "$GITHUB_PATH"
                  echo "FROM_WORKFLOW=overridden" >> "$GITHUB_ENV"
                  echo "GITHUB_SHA=forged" >> "$GITHUB_ENV"
                  printf 'MULTI<<EOF\\nfirst\\nsecond\\nEOF\\n' >> "$GITHUB_ENV"
              - run: |
                  mytool
                  echo "env=$FROM_WORKFLOW expr=${{ env.FROM_WORKFLOW }} sha=$GITHUB_SHA"
                  echo "$MULTI" | tr '\\n' ','; echo
              - run: echo "step env wins=$FROM_WORKFLOW"
                env:
                  FROM_WORKFLOW: step
        """
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    assert "tool-ran" in output
    assert f"env=overridden expr=overridden sha={SHA}" in output
    assert "first,second," in output
    assert "step env wins=step" in output
    assert "spindle: GITHUB_ENV cannot change GITHUB_SHA; ignored" in output


async def test_a_docker_step_whose_image_cannot_be_had_fails_naming_it(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - uses: docker://registry.invalid/nobody/nothing:1
                with:
                  args: echo hi
        """
    )
    assert run.status is Status.FAILED
    assert "registry.invalid/nobody/nothing:1" in (run.error or "")
    lines = await harness.lines(run.id)
    assert [(line.step_status, line.step_command) for line in lines if line.kind == "control"] == [
        ("start", "uses: docker://registry.invalid/nobody/nothing:1"),
        ("end", "uses: docker://registry.invalid/nobody/nothing:1"),
    ]
    assert any(
        "registry.invalid/nobody/nothing:1" in line.content and line.stream == "stderr" for line in lines
    )


async def test_unsupported_keys_and_runner_labels_are_logged_and_the_job_still_runs(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        concurrency: ci
        jobs:
          a:
            runs-on: [self-hosted, gpu]
            steps:
              - run: echo ran-anyway
        """
    )
    assert run.status is Status.SUCCESS
    output = await harness.output(run.id)
    assert "ran-anyway" in output
    assert "spindle: a: runs-on gpu is not available here; the job runs in a Linux container" in output


async def test_windows_and_macos_jobs_and_matrix_legs_are_not_run_and_do_not_fail_the_run(
    harness: Harness,
) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          win:
            runs-on: windows-latest
            steps:
              - run: echo should-not-run
          legs:
            strategy:
              matrix:
                os: [ubuntu-latest, macos-14, windows-2022]
            runs-on: ${{ matrix.os }}
            steps:
              - run: echo "leg on ${{ matrix.os }}"
        """
    )
    assert (run.status, run.error) == (Status.SUCCESS, None)
    output = await harness.output(run.id)
    assert "should-not-run" not in output
    assert "leg on ubuntu-latest" in output
    assert "leg on macos-14" not in output and "leg on windows-2022" not in output
    assert (
        "spindle: job win not run: it asks for a windows-latest runner, which this spindle does not have"
        in output
    )
    assert (
        "spindle: job legs (macos-14) not run: it asks for a macos-14 runner, "
        "which this spindle does not have" in output
    )
    assert (
        "spindle: job legs (windows-2022) not run: it asks for a windows-2022 runner, "
        "which this spindle does not have" in output
    )


async def test_working_directory_defaults_and_shells(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        defaults:
          run:
            working-directory: sub
        jobs:
          a:
            steps:
              - run: pwd
                working-directory: .
              - run: mkdir -p sub/deeper
                working-directory: .
              - run: basename "$PWD"
              - run: |
                  import os, sys
                  print("python", os.path.basename(os.getcwd()), sys.version_info[0])
                shell: python
                working-directory: sub/deeper
              - run: echo missing
                working-directory: nowhere
        """
    )
    assert run.status is Status.FAILED
    assert run.error == "step 'Run echo missing' of job 'a': working-directory 'nowhere' does not exist"
    output = await harness.output(run.id)
    assert "sub" in output and "python deeper 3" in output


async def test_invalid_workflow_fails_the_run_with_a_message_naming_the_problem(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a: {needs: b, steps: [{run: echo}]}
          b: {needs: a, steps: [{run: echo}]}
        """
    )
    assert run.status is Status.FAILED
    assert run.error == "invalid workflow .github/workflows/ci.yml: jobs needs form a cycle: a → b → a"
    assert f"spindle: {run.error}" in await harness.output(run.id)


async def test_expression_error_fails_the_step_that_holds_it(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: echo ${{ nosuch(1) }}
        """
    )
    assert run.status is Status.FAILED
    assert run.error == "step 'Run echo ${{ nosuch(1) }}' of job 'a': unrecognized function 'nosuch'"


async def test_standard_github_and_tangled_variables_describe_a_push(harness: Harness) -> None:
    trigger = {
        "kind": "push",
        "repo": {"knot": "knot.example.com", "did": "did:plc:x", "repo": "demo", "defaultBranch": "main"},
        "push": {"ref": "refs/heads/main", "newSha": SHA, "oldSha": "b" * 40},
    }
    run = await harness.run(
        """
        on: push
        jobs:
          vars:
            steps:
              - run: |
                  env | sort
                  test -d "$HOME" && test -w "$RUNNER_TEMP" && test -d "$RUNNER_TOOL_CACHE" && echo dirs-ready
                  test -d "$GITHUB_WORKSPACE" && test "$PWD" = "$GITHUB_WORKSPACE" && echo cwd-is-workspace
                  python3 -c 'import json,os; print("before=" + json.load(open(os.environ[
                    "GITHUB_EVENT_PATH"]))["before"])'
        """,
        trigger_kind="push",
        trigger=trigger,
    )
    assert run.status is Status.SUCCESS, run.error
    output = await harness.output(run.id)
    expected = {
        "CI": "true",
        "GITHUB_ACTIONS": "true",
        "GITHUB_SHA": SHA,
        "GITHUB_REF": "refs/heads/main",
        "GITHUB_REF_NAME": "main",
        "GITHUB_EVENT_NAME": "push",
        "GITHUB_REPOSITORY": "did:plc:repoowner0000000000000000/demo",
        "GITHUB_JOB": "vars",
        "RUNNER_OS": "Linux",
        # GitHub's layout for jobs in containers.
        "GITHUB_WORKSPACE": "/__w/demo/demo",
        "RUNNER_TEMP": "/__w/_temp",
        "RUNNER_TOOL_CACHE": "/__t",
        "HOME": "/github/home",
        "GITHUB_EVENT_PATH": "/github/workflow/event.json",
        "TANGLED_REPO_KNOT": "knot.example.com",
        "TANGLED_REPO_NAME": "demo",
        "TANGLED_REF": "refs/heads/main",
        "TANGLED_PIPELINE_KIND": "push",
        "TANGLED_REPO_DEFAULT_BRANCH": "main",
        "TANGLED_COMMIT_SHA": SHA,
    }
    for name, value in expected.items():
        assert f"{name}={value}" in output
    assert "dirs-ready" in output and "cwd-is-workspace" in output
    assert "before=" + "b" * 40 in output


async def test_manual_run_without_a_ref_uses_the_commit_as_github_ref(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  echo "ref=$GITHUB_REF event=$GITHUB_EVENT_NAME ctx=${{ github.ref }} sha=${{ github.sha }}"
        """
    )
    assert f"ref={SHA} event=workflow_dispatch ctx={SHA} sha={SHA}" in await harness.output(run.id)


async def test_event_file_holds_the_inputs_as_json(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: |
                  python3 -c 'import json,sys; print(json.dumps(json.load(sys.stdin)["inputs"]))' \\
                    < "$GITHUB_EVENT_PATH"
        """,
        inputs={"a": "1", "b": "two"},
    )
    assert json.loads((await harness.output(run.id))[-1]) == {"a": "1", "b": "two"}


async def test_vars_come_from_the_operator_and_the_token_is_empty(harness: Harness) -> None:
    await harness.started(vars={"DEPLOY_ENV": "staging"})
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            steps:
              - run: echo "env=${{ vars.DEPLOY_ENV }} missing=[${{ vars.NOPE }}] token=[${{ github.token }}]"
        """
    )
    assert run.status is Status.SUCCESS, run.error
    assert "env=staging missing=[] token=[]" in await harness.output(run.id)


async def test_env_given_as_one_expression_is_evaluated_when_the_step_runs(harness: Harness) -> None:
    run = await harness.run(
        """
        on: workflow_dispatch
        jobs:
          a:
            strategy:
              matrix:
                include:
                  - env: {FLAVOUR: vanilla, LEVEL: 3}
            env: ${{ fromJSON('{"FROM_JOB":"job"}') }}
            steps:
              - env: ${{ matrix.env }}
                run: echo "flavour=$FLAVOUR level=$LEVEL job=$FROM_JOB"
              - env: ${{ matrix.nothing }}
                run: echo unreachable
        """
    )
    output = await harness.output(run.id)
    assert "flavour=vanilla level=3 job=job" in output
    assert run.status is Status.FAILED
    assert "env must give a map of variables, got null" in (run.error or "")
