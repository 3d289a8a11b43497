// The console's glue around htmx: the bearer token lives in this tab's sessionStorage only and
// rides on every request htmx makes; a refused token brings the login form back.
"use strict";

const TOKEN_KEY = "modelgate.token";

function signedIn() {
  return sessionStorage.getItem(TOKEN_KEY) !== null;
}

// Polling pauses while the user edits traffic weights (a refresh would drop the input).
function mayRefresh() {
  return signedIn() && !document.activeElement?.closest("form.weights");
}

function flash(message, isError) {
  const line = document.getElementById("flash");
  line.textContent = message;
  line.className = isError ? "error" : "ok";
}

function showLogin(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  document.getElementById("console").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("login-error").textContent = message;
}

function showConsole() {
  document.getElementById("login").hidden = true;
  document.getElementById("console").hidden = false;
  htmx.trigger(document.body, "mg:refresh");
}

// Ask the manager who the stored token is; the console opens only if it answers.
function checkToken() {
  return htmx.ajax("GET", "/ui/fragments/whoami", { target: "#whoami" }).then(() => {
    if (signedIn()) showConsole();
  });
}

function problemDetail(xhr) {
  try {
    return JSON.parse(xhr.responseText).detail;
  } catch {
    return `HTTP ${xhr.status}`;
  }
}

document.addEventListener("htmx:configRequest", (event) => {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (token !== null) event.detail.headers.Authorization = `Bearer ${token}`;
});

document.addEventListener("htmx:responseError", (event) => {
  const xhr = event.detail.xhr;
  if (xhr.status === 401) {
    showLogin(`Token refused: ${problemDetail(xhr)}`);
  } else {
    flash(`${event.detail.elt.dataset.action || event.detail.pathInfo.requestPath}: ${problemDetail(xhr)}`, true);
  }
});

document.addEventListener("htmx:sendError", () => flash("the manager does not answer", true));

document.addEventListener("htmx:afterRequest", (event) => {
  const action = event.detail.elt.dataset.action;
  if (action && event.detail.successful) {
    flash(`${action}: done`, false);
    htmx.trigger(document.body, "mg:refresh");
  }
});

// PUT /v1/models/{name}/traffic takes {"weights": {"<version>": percent}}; versions at 0 are
// left out (all at 0: the newest version takes all).
htmx.defineExtension("weights-json", {
  onEvent(name, event) {
    if (name === "htmx:configRequest") event.detail.headers["Content-Type"] = "application/json";
  },
  encodeParameters(xhr, parameters) {
    const weights = {};
    for (const [version, value] of parameters.entries()) {
      if (Number(value) > 0) weights[version] = Number(value);
    }
    xhr.overrideMimeType("text/json");
    return JSON.stringify({ weights });
  },
});

document.addEventListener("DOMContentLoaded", () => {
  document.getElementById("login-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const input = document.getElementById("token");
    sessionStorage.setItem(TOKEN_KEY, input.value);
    input.value = "";
    checkToken();
  });
  document.getElementById("logout").addEventListener("click", () => showLogin(""));
  if (signedIn()) checkToken();
  else showLogin("");
});
