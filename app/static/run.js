// The run page: every workflow's status over one Server-Sent Events stream, each log over a WebSocket.
// One stream for the pipeline, not one per workflow: browsers give a host six HTTP/1.1 connections
// and an open EventSource holds one (WebSockets don't count), so a seventh workflow would stall.
// Log lines are hostile input: they are only ever inserted as text (textContent), never as HTML.
"use strict";

(function () {
  const FINISHED = new Set(["success", "failed", "timeout", "cancelled"]);
  const KNOWN = new Set(["pending", "running", ...FINISHED]);

  function socketUrl(path) {
    const url = new URL(path, window.location.href);
    url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
    return url.href;
  }

  function lineElement(line) {
    const el = document.createElement("div");
    el.className = "line";
    if (line.kind === "control") {
      const end = line.step_status === "end";
      el.classList.add("control");
      if (end) {
        el.classList.add("end");
        el.textContent = "■ end of step " + line.step_id + ": " + (line.content || "");
      } else {
        el.textContent = "▶ step " + line.step_id + ": " + (line.content || line.step_command || "");
        if (line.step_command && line.step_command !== line.content) {
          const command = document.createElement("span");
          command.className = "command";
          command.textContent = "$ " + line.step_command;
          el.appendChild(command);
        }
      }
    } else {
      el.classList.add(line.stream === "stderr" ? "stderr" : "stdout");
      el.textContent = line.content;
    }
    return el;
  }

  function note(log, text) {
    const el = document.createElement("div");
    el.className = "note";
    el.textContent = text;
    log.appendChild(el);
  }

  function watch(section) {
    const badge = section.querySelector('[data-role="badge"]');
    const meta = section.querySelector('[data-role="meta"]');
    const log = section.querySelector('[data-role="log"]');

    function showStatus(doc) {
      const status = KNOWN.has(doc.status) ? doc.status : "unknown";
      badge.textContent = status;
      badge.className = "badge status-" + status;
      section.dataset.status = status;
      const parts = [];
      if (doc.exitCode !== undefined) parts.push("exit code " + doc.exitCode);
      if (doc.error) parts.push(doc.error);
      meta.textContent = parts.join(" · ");
      return FINISHED.has(status);
    }

    function follow(attempt) {
      // The server sends the whole log from the start on every connection.
      const socket = new WebSocket(socketUrl(section.dataset.logsPath));
      socket.onopen = function () {
        log.replaceChildren();
        attempt = 0;
      };
      socket.onmessage = function (message) {
        const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
        log.appendChild(lineElement(JSON.parse(message.data)));
        if (atBottom) log.scrollTop = log.scrollHeight;
      };
      socket.onclose = function (event) {
        if (event.code === 1000) {
          section.dataset.logComplete = "true";
          return;
        }
        if (event.code >= 4000) {
          note(log, "log unavailable: " + (event.reason || event.code));
          return;
        }
        window.setTimeout(function () { follow(attempt + 1); }, Math.min(1000 * 2 ** attempt, 15000));
      };
    }
    follow(0);
    return showStatus;
  }

  // Workflow name → its section's showStatus. A Map, so a (hostile) name never enters a selector.
  const workflows = new Map();
  document.querySelectorAll("section.workflow").forEach(function (section) {
    workflows.set(section.dataset.workflow, watch(section));
  });

  const main = document.querySelector("main[data-status-path]");
  if (main === null || workflows.size === 0) return;
  const finished = new Set();
  const events = new EventSource(new URL(main.dataset.statusPath, window.location.href));
  main.dataset.statusStream = "open";
  events.onmessage = function (message) {
    const doc = JSON.parse(message.data);
    const showStatus = workflows.get(doc.workflow);
    if (showStatus === undefined) return;
    if (showStatus(doc)) finished.add(doc.workflow);
    if (finished.size === workflows.size) {
      // Closed by us at the end: an EventSource would otherwise reconnect to a finished pipeline.
      events.close();
      main.dataset.statusStream = "closed";
    }
  };
})();
