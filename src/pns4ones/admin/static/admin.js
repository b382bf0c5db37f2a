// pns4ones admin panel: confirmations, copy to clipboard, live subscription counts and status figures.
// The only script of the panel (the Content-Security-Policy forbids inline script);
// every text comes from data- attributes rendered from the message catalogs.
"use strict";

function confirmations() {
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) {
        event.preventDefault();
      }
    });
  }
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

function liveCounts() {
  const url = document.body.dataset.countsUrl;
  if (!url) {
    return;
  }
  const interval = Number(document.body.dataset.pollMs) || 3000;
  const poll = async () => {
    let response;
    try {
      response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
    } catch (e) {
      window.setTimeout(poll, interval);
      return;
    }
    if (response.status === 401) {
      window.location.assign("/login");
      return;
    }
    if (response.ok) {
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
    }
    window.setTimeout(poll, interval);
  };
  window.setTimeout(poll, interval);
}

// The status page: its figures (server-rendered HTML of this same origin) replaced at every poll.
function liveStatus() {
  const box = document.querySelector("[data-live-url]");
  if (!box) {
    return;
  }
  const interval = Number(box.dataset.pollMs) || 3000;
  const poll = async () => {
    let response;
    try {
      response = await fetch(box.dataset.liveUrl, {credentials: "same-origin", cache: "no-store"});
    } catch (e) {
      window.setTimeout(poll, interval);
      return;
    }
    if (response.status === 401) {
      window.location.assign("/login");
      return;
    }
    if (response.ok) {
      box.innerHTML = await response.text();
      box.dataset.updated = String(Date.now());
    }
    window.setTimeout(poll, interval);
  };
  window.setTimeout(poll, interval);
}

document.addEventListener("DOMContentLoaded", () => {
  confirmations();
  copyButtons();
  liveCounts();
  liveStatus();
});
