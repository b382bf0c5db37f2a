// pns4ones admin panel: confirmations, copy to clipboard, live subscription counts, status figures and Online sessions.
// The only script of the panel (the Content-Security-Policy forbids inline script);
// every text comes from data- attributes rendered from the message catalogs.
"use strict";

// A form with data-confirm asks that first; an Online row's form (data-confirm-online) asks the table's
// question for its kind, filled with the row's values.  Listening on the document covers rows the refresh adds.
function confirmText(form) {
  if (form.dataset.confirm !== undefined) {
    return form.dataset.confirm;
  }
  const kind = form.dataset.confirmOnline;
  const row = form.closest("tr");
  const table = form.closest("table");
  if (!kind || !row || !table) {
    return null;
  }
  const transport = row.dataset.transport;
  const values = {user: row.dataset.user, ib: row.dataset.ib, session: row.dataset.session, count: row.dataset.count};
  values.transport = table.dataset["transport" + transport.charAt(0).toUpperCase() + transport.slice(1)] || transport;
  if (kind === "user") {
    return fillPattern(table.dataset.confirmUser, values);
  }
  return fillPattern(transport === "tcp" ? table.dataset.confirmTcp : table.dataset.confirmWeb, values);
}

function confirmations() {
  document.addEventListener(
    "submit",
    (event) => {
      const form = event.target;
      const text = form instanceof HTMLFormElement ? confirmText(form) : null;
      if (text !== null && !window.confirm(text)) {
        event.preventDefault();
      }
    },
    true,
  );
}

function copyFallback(source) {
  const range = document.createRange();
  range.selectNodeContents(source);
  const selection = window.getSelection();
  selection.removeAllRanges();
  selection.addRange(range);
  const ok = document.execCommand("copy");
  selection.removeAllRanges();
  return ok;
}

function copyButtons() {
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.addEventListener("click", async () => {
      const source = document.getElementById(button.dataset.copy);
      const status = button.parentElement.querySelector(".copy-status");
      const value = source.textContent.trim();
      let ok = false;
      try {
        await navigator.clipboard.writeText(value);
        ok = true;
      } catch (e) {
        ok = copyFallback(source);
      }
      button.dataset.copied = ok ? value : "";
      if (status) {
        status.textContent = ok ? document.body.dataset.copied : document.body.dataset.copyFailed;
      }
    });
  }
}

function renderIbs(list, ibs) {
  const names = Object.keys(ibs).sort();
  list.replaceChildren();
  if (names.length === 0) {
    const empty = document.createElement("li");
    empty.className = "empty";
    empty.textContent = list.dataset.empty;
    list.append(empty);
    return;
  }
  for (const name of names) {
    const item = document.createElement("li");
    const code = document.createElement("code");
    code.textContent = name;
    const count = document.createElement("b");
    count.textContent = String(ibs[name]);
    item.append(code, ": ", count);
    list.append(item);
  }
}

// Every live part of the panel: fetch url() every interval ms and hand a good answer to apply();
// a network error just waits for the next turn, a 401 (the session ended) goes to the login page.
function pollEvery(url, interval, apply) {
  const poll = async () => {
    let response;
    try {
      response = await fetch(url(), {credentials: "same-origin", cache: "no-store"});
    } catch (e) {
      window.setTimeout(poll, interval);
      return;
    }
    if (response.status === 401) {
      window.location.assign("/login");
      return;
    }
    if (response.ok) {
      await apply(response);
    }
    window.setTimeout(poll, interval);
  };
  window.setTimeout(poll, interval);
}

function liveCounts() {
  const url = document.body.dataset.countsUrl;
  if (!url) {
    return;
  }
  const interval = Number(document.body.dataset.pollMs) || 3000;
  pollEvery(() => url, interval, async (response) => {
    const doc = await response.json();
    const total = document.getElementById("total-count");
    if (total) {
      total.textContent = String(doc.total);
    }
    for (const badge of document.querySelectorAll("[data-app-count]")) {
      const app = doc.apps[badge.dataset.appCount];
      badge.textContent = String(app ? app.total : 0);
    }
    for (const list of document.querySelectorAll("[data-app-ibs]")) {
      const app = doc.apps[list.dataset.appIbs];
      renderIbs(list, app ? app.ibs : {});
    }
    for (const figure of document.querySelectorAll("[data-app-transport]")) {
      const app = doc.apps[figure.dataset.app];
      figure.textContent = String(app && app.transports ? app.transports[figure.dataset.appTransport] || 0 : 0);
    }
    document.body.dataset.countsUpdated = String(Date.now());
  });
}

// The status page: its figures (server-rendered HTML of this same origin) replaced at every poll.
function liveStatus() {
  const box = document.querySelector("[data-live-url]");
  if (!box) {
    return;
  }
  const interval = Number(box.dataset.pollMs) || 3000;
  pollEvery(() => box.dataset.liveUrl, interval, async (response) => {
    box.innerHTML = await response.text();
    box.dataset.updated = String(Date.now());
  });
}

// The Online view: one page of sessions as JSON at every poll, filled into copies of the page's
// <template id="online-row"> with textContent (never markup); rows still shown are updated in place.
function fillPattern(pattern, values) {
  return (pattern || "").replace(/\{(\w+)\}/g, (whole, name) => (Object.hasOwn(values, name) ? String(values[name]) : whole));
}

function setText(root, selector, text) {
  const element = root.querySelector(selector);
  if (element) {
    element.textContent = text;
  }
}

function onlineTimes(tr, row) {
  setText(tr, ".since", row.since || "\u2014");
  setText(tr, ".age", row.age);
  setText(tr, ".delivered", row.delivered === null ? "\u2014" : String(row.delivered));
}

function onlineRow(table, template, row) {
  const tr = template.content.firstElementChild.cloneNode(true);
  tr.dataset.user = row.user;
  tr.dataset.ib = row.ib;
  tr.dataset.session = row.session;
  tr.dataset.transport = row.transport;
  tr.dataset.count = String(row.user_sessions);
  tr.dataset.sig = row.sig;
  tr.classList.toggle("remote", row.remote);
  const kind = row.transport.charAt(0).toUpperCase() + row.transport.slice(1);
  const label = table.dataset["transport" + kind] || row.transport;
  const values = {user: row.user, ib: row.ib, session: row.session, transport: label, count: row.user_sessions, node: row.node};
  setText(tr, ".user-id", row.user);
  setText(tr, ".groups", row.groups);
  setText(tr, ".ib", row.ib);
  setText(tr, ".transport", label);
  setText(tr, ".peer", row.peer);
  setText(tr, ".node", row.node);
  onlineTimes(tr, row);
  const one = tr.querySelector("form.disconnect-session");
  const all = tr.querySelector("form.disconnect-user");
  const note = tr.querySelector(".remote-note");
  for (const form of [one, all]) {
    form.querySelector('[name="ib"]').value = row.ib;
    form.querySelector('[name="user"]').value = row.user;
  }
  one.querySelector('[name="session"]').value = row.session;
  if (row.remote) {
    one.remove();
    all.remove();
    note.textContent = fillPattern(table.dataset.onNode, values);
    return tr;
  }
  note.remove();
  if (row.first && row.user_sessions > 1) {
    all.querySelector("button").textContent = fillPattern(table.dataset.disconnectUser, values);
  } else {
    all.remove();
  }
  return tr;
}

function renderOnline(box, doc) {
  const table = box.querySelector("#online");
  const body = table.querySelector("tbody");
  const template = document.getElementById("online-row");
  const shown = new Map();
  for (const tr of body.rows) {
    shown.set(tr.dataset.session, tr);
  }
  const rows = doc.rows.map((row) => {
    const old = shown.get(row.session);
    if (old && old.dataset.sig === row.sig && old.dataset.ib === row.ib && old.dataset.user === row.user) {
      onlineTimes(old, row);
      return old;
    }
    return onlineRow(table, template, row);
  });
  const same = rows.length === body.rows.length && rows.every((tr, i) => body.rows[i] === tr);
  if (!same) {
    body.replaceChildren(...rows);
  }
  table.hidden = rows.length === 0;
  document.getElementById("online-empty").hidden = rows.length > 0;
  setText(document, "#online-users", String(doc.users));
  setText(document, "#online-sessions", String(doc.sessions));
  setText(document, "#online-remote", String(doc.remote));
  const pager = document.getElementById("online-pager");
  pager.hidden = doc.pages <= 1;
  setText(pager, ".where", doc.where);
  for (const [selector, url] of [[".prev", doc.previous], [".next", doc.next]]) {
    const link = pager.querySelector(selector);
    link.hidden = !url;
    if (url) {
      link.href = url;
    }
  }
}

function liveOnline() {
  const box = document.querySelector("[data-online-url]");
  if (!box) {
    return;
  }
  const interval = Number(box.dataset.pollMs) || 3000;
  let last = null;
  pollEvery(() => box.dataset.onlineUrl, interval, async (response) => {
    const text = await response.text();
    if (text !== last) {
      last = text;
      renderOnline(box, JSON.parse(text));
    }
    box.dataset.updated = String(Date.now());
  });
}

document.addEventListener("DOMContentLoaded", () => {
  confirmations();
  copyButtons();
  liveCounts();
  liveStatus();
  liveOnline();
});
