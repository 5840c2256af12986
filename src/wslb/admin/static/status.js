// The wslb status page: polls the admin JSON API and renders it.
// Every value from the API reaches the page as text (textContent, append of
// strings, className from fixed lists), never as markup.
"use strict";

(() => {
  const POLL_MS = 2000;
  const TIMEOUT_MS = 5000;
  const PAGE = 500; // rows per table: one page of the API's list
  const STATES = ["healthy", "starting", "unhealthy", "dead"];
  const ACTIONS = ["launch", "terminate", "adopt", "lost"];
  const OUTCOMES = ["ok", "400", "401", "403", "429", "502", "503"];
  const HISTORY = "api/v1/history";
  // Which page each table shows: the page's URL names its cursor
  // (?workers=CURSOR&sessions=CURSOR; none: the first page).
  const view = new URLSearchParams(location.search);
  const listed = (name) => `api/v1/${name}?limit=${PAGE}` +
    (view.get(name) ? `&cursor=${encodeURIComponent(view.get(name))}` : "");
  const API = [listed("workers"), listed("sessions"), "api/v1/queue", "api/v1/status"];

  const byId = (id) => document.getElementById(id);
  let lastGood = null; // Date of the last complete poll
  const clockTime = (date) => date.toLocaleTimeString([], { hour12: false });

  // -- small DOM helpers ---------------------------------------------------

  function el(tag, className, ...children) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    node.append(...children.map((c) => (c instanceof Node ? c : String(c ?? "—"))));
    return node;
  }

  function setText(id, text) {
    byId(id).textContent = String(text);
  }

  function known(value, list) {
    return list.includes(value) ? value : "unknown";
  }

  function pill(text, kind) {
    return el("span", `pill ${kind}`, text);
  }

  function bar(load, capacity) {
    const fill = el("span", load > capacity ? "over" : "");
    fill.style.width = `${capacity > 0 ? Math.min(100, (100 * load) / capacity) : 0}%`;
    return el("span", "bar", fill);
  }

  function fillTable(id, items, row, emptyText) {
    const rows = items.map(row);
    if (!items.length) {
      const cell = el("td", "note", emptyText);
      cell.colSpan = byId(id).tHead.rows[0].cells.length;
      rows.push(el("tr", "", cell));
    }
    byId(id).tBodies[0].replaceChildren(...rows);
  }

  // Links to the first page and the next one of a paged table ("" drops the cursor).
  function pager(name, next) {
    const link = (text, cursor) => {
      const params = new URLSearchParams(view);
      if (cursor) params.set(name, cursor); else params.delete(name);
      const a = el("a", "", text);
      a.href = `?${params}`;
      return a;
    };
    byId(`${name}-pager`).replaceChildren(
      ...(view.get(name) ? [link("first page", "")] : []),
      ...(next ? [link(`next ${PAGE} →`, next)] : []));
  }

  // -- time ------------------------------------------------------------------

  function duration(seconds) {
    if (!(seconds >= 0)) return "—";
    const s = Math.floor(seconds);
    const m = Math.floor(s / 60);
    const h = Math.floor(m / 60);
    if (s < 60) return `${s}s`;
    if (m < 60) return `${m}m ${s % 60}s`;
    if (h < 24) return `${h}h ${m % 60}m`;
    return `${Math.floor(h / 24)}d ${h % 24}h`;
  }

  function age(iso, now) {
    return iso ? duration((now - Date.parse(iso)) / 1000) : "—";
  }

  function ago(iso, now) {
    return iso ? `${age(iso, now)} ago` : "never";
  }

  function timed(text, iso) {
    const node = el("span", "", text);
    if (iso) node.title = iso;
    return node;
  }

  // -- rendering -------------------------------------------------------------

  // The pool's totals: the history's last sample (counts the registry keeps),
  // or, before there is one, what the tables' pages hold.
  function totals(workersBody, sessionsBody) {
    const sample = kept.samples[kept.samples.length - 1];
    if (sample && sample.workers) return sample;
    const { workers } = workersBody;
    const { sessions } = sessionsBody;
    const live = workers.filter((w) => w.state !== "dead");
    return {
      workers: Object.fromEntries(STATES.map((s) => [s, workers.filter((w) => w.state === s).length])),
      load: live.reduce((sum, w) => sum + w.load, 0),
      capacity: live.reduce((sum, w) => sum + w.capacity, 0),
      sessions: sessions.length,
      sessions_in_grace: sessions.filter((s) => !s.connected).length,
    };
  }

  function renderCards(workersBody, sessionsBody, queue, status) {
    const pool = totals(workersBody, sessionsBody);
    const counts = STATES.map((s) => [s, pool.workers[s] ?? 0]);
    // Draining is a flag the counts do not have: told when one page holds every worker.
    const whole = !view.get("workers") && !workersBody.next;
    const draining = whole ? workersBody.workers.filter((w) => w.draining).length : 0;
    setText("workers-total", counts.reduce((sum, [, n]) => sum + n, 0));
    byId("workers-states").replaceChildren(
      ...counts.filter(([, n]) => n).map(([s, n]) => el("span", `count state-${s}`, `${n} ${s}`)),
      ...(draining ? [el("span", "count draining", `${draining} draining`)] : []),
    );

    const { load, capacity } = pool;
    setText("load-total", `${load} / ${capacity}`);
    byId("load-bar").style.width = `${capacity ? Math.min(100, (100 * load) / capacity) : 0}%`;

    const connected = pool.sessions - pool.sessions_in_grace;
    setText("sessions-total", pool.sessions);
    setText("sessions-split", `${connected} connected · ${pool.sessions_in_grace} in grace`);

    setText("queue-length", queue.length);
    setText("queue-wait", queue.length ? `oldest waiting ${duration(queue.oldest_wait_seconds)}` : "nobody waiting");

    setText("leader", status.leader ? "leader" : "follower");
    byId("leader").className = `value ${status.leader ? "is-leader" : "is-follower"}`;
    setText("fencing-token", `fencing token ${status.fencing_token}`);
  }

  function workerRow(w, now) {
    const id = el("td", "", el("div", "mono strong", w.id), el("div", "muted small", `${w.provider} · ${w.url}`));
    const state = el("td", "", pill(w.state, `state-${known(w.state, STATES)}`));
    if (w.draining) state.append(" ", pill("draining", "draining"));
    const load = el("td", "", el("span", "load", bar(w.load, w.capacity), el("span", "mono", `${w.load} / ${w.capacity}`)));
    const sessions = el("td", "num", w.sessions.length);
    sessions.title = w.sessions.join("\n");
    return el("tr", w.state === "dead" ? "dim" : "",
      id, state, load, sessions,
      el("td", "when", timed(age(w.started_at, now), w.started_at)),
      el("td", "when", timed(ago(w.last_seen, now), w.last_seen)));
  }

  function sessionRow(s, now) {
    return el("tr", "",
      el("td", "mono", s.key),
      el("td", "mono", s.worker),
      el("td", "num", s.cost),
      el("td", "", s.connected ? pill("connected", "connected") : pill("in grace", "grace")),
      el("td", "num", s.http_requests),
      el("td", "when", timed(ago(s.since, now), s.since)));
  }

  function actionRow(a, now) {
    const clock = a.time ? a.time.slice(11, 19) : "—";
    return el("tr", "",
      el("td", "when", timed(clock, a.time), " ", el("span", "muted small", `(${ago(a.time, now)})`)),
      el("td", "", pill(a.action, `action-${known(a.action, ACTIONS)}`)),
      el("td", "mono", a.workers.join(", ")),
      el("td", "num", a.fencing_token));
  }

  function render([workersBody, sessionsBody, queue, status]) {
    const now = Date.parse(status.now);
    setText("instance", status.instance);
    byId("role").replaceChildren(status.leader ? "leader" : "follower");
    byId("role").className = `pill ${status.leader ? "is-leader" : "is-follower"}`;
    renderCards(workersBody, sessionsBody, queue, status);
    fillTable("workers", workersBody.workers, (w) => workerRow(w, now), "No workers registered.");
    pager("workers", workersBody.next);
    fillTable("sessions", sessionsBody.sessions, (s) => sessionRow(s, now), "No sessions.");
    pager("sessions", sessionsBody.next);
    fillTable("actions", status.scaler_actions, (a) => actionRow(a, now), "No scaler actions yet.");
    document.title = `wslb · ${byId("workers-total").textContent} workers · ` +
      `${byId("sessions-total").textContent} sessions · queue ${queue.length}`;
  }

  // -- the last hour ---------------------------------------------------------

  let kept = { samples: [], last: 0 }; // what api/v1/history sent so far
  const MIN_SPAN = 60; // seconds: the narrowest time axis

  const CHARTS = [ // figure id, title, [series name, label, value of a sample, axis], formats
    ["chart-sessions", "Sessions", [
      ["connected", "connected", (s) => s.sessions - s.sessions_in_grace],
      ["in_grace", "in grace", (s) => s.sessions_in_grace],
    ]],
    ["chart-queue", "Queue", [
      ["queue_length", "waiting", (s) => s.queue_length],
      ["oldest_wait", "oldest wait", (s) => s.queue_oldest_wait, "right"],
    ]],
    ["chart-workers", "Workers by state", STATES.map((state) => [state, state, (s) => s.workers?.[state]])],
    ["chart-load", "Load vs capacity", [
      ["load", "load", (s) => s.load],
      ["capacity", "capacity", (s) => s.capacity],
    ]],
    ["chart-handshakes", "Handshakes per second, this instance", OUTCOMES.map((outcome) =>
      [`outcome-${outcome}`, outcome, (s) => s.handshakes?.[outcome]]), { left: "rate" }],
  ];

  async function pollHistory() {
    const body = await getJSON(`${HISTORY}?after=${kept.last}`);
    if (body.last < kept.last) { // the instance restarted: its samples start again
      kept = { samples: [], last: 0 };
      return pollHistory();
    }
    const oldest = body.now - body.window;
    kept.samples = kept.samples.concat(body.samples).filter((s) => s.time > oldest);
    kept.last = body.last;
    return body;
  }

  function drawCharts({ now, window, interval }) {
    // From the oldest sample held (an instance younger than an hour has less), a minute at least.
    const oldest = kept.samples.length ? kept.samples[0].time : now;
    const from = Math.min(now - MIN_SPAN, Math.max(now - window, oldest));
    setText("history-note", `· sampled every ${duration(interval)} by this instance`);
    for (const [id, title, lines, formats] of CHARTS) {
      const series = lines.map(([name, label, value, axis]) => ({
        name, label, axis: axis ?? "left",
        values: kept.samples.map((s) => [s.time, Number.isFinite(value(s)) ? value(s) : null]),
      }));
      // Handshakes: "ok" and the outcomes that happened in the hour; not seven flat lines.
      const shown = id === "chart-handshakes"
        ? series.filter((s) => s.name === "outcome-ok" || s.values.some(([, v]) => v > 0))
        : series;
      wslbCharts.draw(byId(id), { title, from, to: now, series: shown, formats: { left: "count", right: "seconds", ...formats } });
    }
  }

  // -- the admin token ---------------------------------------------------------
  // With an [admin] token every API read needs it: the page asks once (or
  // takes it from a #token=... fragment, which no server sees) and keeps it
  // for this tab only, in sessionStorage.

  const TOKEN_KEY = "wslb.adminToken";

  function takeTokenFromFragment() {
    const match = /^#token=(.+)$/.exec(location.hash);
    if (!match) return;
    sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }

  function authorization() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  function askForToken() {
    sessionStorage.removeItem(TOKEN_KEY);
    byId("login").hidden = false;
    byId("token").focus();
  }

  // -- polling ---------------------------------------------------------------

  async function getJSON(path) {
    const abort = new AbortController();
    const timer = setTimeout(() => abort.abort(), TIMEOUT_MS);
    try {
      let response;
      try {
        response = await fetch(path, {
          cache: "no-store", signal: abort.signal,
          headers: { Accept: "application/json", ...authorization() },
        });
      } catch (e) {
        throw new Error(`${path}: ${abort.signal.aborted ? `no answer in ${TIMEOUT_MS / 1000}s` : e.message}`);
      }
      const body = await response.json().catch(() => ({}));
      const tokenRefused = response.status === 401 || (response.status === 403 && sessionStorage.getItem(TOKEN_KEY));
      if (tokenRefused) throw Object.assign(new Error("the admin API needs its token"), { needsToken: true });
      if (!response.ok) throw new Error(`${path}: HTTP ${response.status}${body.error ? ` ${body.error}` : ""}`);
      return body;
    } finally {
      clearTimeout(timer);
    }
  }

  function showProblem(problem) {
    const banner = byId("banner");
    banner.hidden = !problem;
    byId("content").classList.toggle("stale", Boolean(problem));
    if (!problem) return;
    const since = lastGood ? `showing data from ${clockTime(lastGood)}` : "no data yet";
    setText("banner-detail", `— ${problem} (${since}; retrying every ${POLL_MS / 1000}s)`);
    document.title = "⚠ wslb: admin API unreachable";
  }

  let nextPoll = null;

  async function poll() {
    try {
      const [views, span] = await Promise.all([Promise.all(API.map(getJSON)), pollHistory()]);
      render(views); // after the history: the cards read its last sample
      drawCharts(span);
      lastGood = new Date();
      setText("updated", `updated ${clockTime(lastGood)}`);
      showProblem(null);
    } catch (e) {
      if (e.needsToken) askForToken();
      showProblem(e.message);
    } finally {
      clearTimeout(nextPoll); // one timer, even when a submitted token polled meanwhile
      nextPoll = setTimeout(poll, POLL_MS);
    }
  }

  byId("login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, byId("token").value.trim());
    byId("token").value = "";
    byId("login").hidden = true;
    poll();
  });

  takeTokenFromFragment();
  poll();
})();
