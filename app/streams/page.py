"""The run page: server-rendered HTML, every value escaped; run.js makes it live.

Log text never reaches this template; the browser inserts it with textContent only, and the
Content-Security-Policy forbids inline script, so hostile log lines stay text.
"""

from __future__ import annotations

from html import escape
from urllib.parse import quote

from app.runs.models import Pipeline, Status
from app.streams.service import run_path

CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


def _document(title: str, body: str) -> str:
    # Pages live at /runs/{knot}/{rkey}: relative links work behind a path prefix too.
    return (
        "<!doctype html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(title)}</title>\n"
        '<link rel="icon" href="data:,">\n'
        '<link rel="stylesheet" href="../../static/run.css">\n'
        '<script src="../../static/run.js" defer></script>\n'
        f"</head>\n<body>\n{body}\n</body>\n</html>\n"
    )


def render(pipeline: Pipeline) -> str:
    """The page of `pipeline`: a section per workflow with its status badge and log."""
    sections = []
    for run in pipeline.workflow_runs:
        status = Status(run.status).value
        path = escape(f"{run_path(pipeline.knot, pipeline.rkey)}/{quote(run.name, safe='')}")
        sections.append(
            f'<section class="workflow" data-workflow="{escape(run.name)}"'
            f' data-logs-path="../../logs/{path}">\n'
            f'<h2><span class="badge status-{status}" data-role="badge">{status}</span>'
            f' <span class="name">{escape(run.name)}</span>'
            f' <span class="path">{escape(run.path)}</span></h2>\n'
            '<p class="meta" data-role="meta"></p>\n'
            '<pre class="log" data-role="log" aria-live="polite"></pre>\n'
            "</section>"
        )
    header = (
        "<header>\n"
        f"<h1>Pipeline <code>{escape(pipeline.rkey)}</code></h1>\n"
        f'<p class="repo"><code>{escape(pipeline.repo_did)}</code> / <strong>{escape(pipeline.repo_name)}'
        f"</strong> at <code>{escape(pipeline.sha)}</code> on <code>{escape(pipeline.knot)}</code>"
        f" &middot; {escape(pipeline.trigger_kind)}</p>\n"
        "</header>"
    )
    # One status stream for the whole pipeline: a stream per workflow would take a connection each.
    status_path = escape(f"../../status/{run_path(pipeline.knot, pipeline.rkey)}")
    main = f'<main data-status-path="{status_path}">\n'
    body = header + "\n" + main + ("\n".join(sections) or "<p>No workflows.</p>") + "\n</main>"
    return _document(f"Pipeline {pipeline.rkey} · {pipeline.knot}", body)


def not_found(knot: str, rkey: str) -> str:
    """The page for a pipeline this spindle does not know."""
    body = (
        "<header>\n<h1>Pipeline not found</h1>\n</header>\n<main>\n"
        f"<p>This spindle has no pipeline <code>{escape(rkey)}</code>"
        f" from knot <code>{escape(knot)}</code>.</p>\n</main>"
    )
    return _document("Pipeline not found", body)
