"""The GitHub Actions workflow language: the one place YAML becomes a typed model.

    workflow.py     parse_workflow(path, source) → Workflow (cached by source), WorkflowFile
    loader.py       YAML 1.2 read safely (size, depth, aliases, tags, duplicate keys)
    triggers.py     `on:` → Triggers: events, push / pull_request filters, dispatch inputs
    filters.py      filter patterns and GitHub's push / pull_request matching
    inputs.py       workflow_dispatch inputs: declarations, a trigger's values, the `inputs` context
    jobs.py         name, env, defaults, jobs → Job, Step, Strategy, RunsOn, Container
    uses.py         `uses:` → RepositoryAction | LocalAction | DockerImage
    expressions.py  `${{ }}` expressions: parser and evaluator
    planner.py      the plan of a run: job order, matrix expansion
    exceptions.py   InvalidWorkflow (refuses the trigger), WorkflowError (fails the run)

Engines consume this model and define no workflow types of their own.
"""
