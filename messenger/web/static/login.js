// The login / register screen.

import * as api from "./api.js";
import { randomId } from "./session.js";
import { $, clearError, showError } from "./dom.js";
import { startSession } from "./lifecycle.js";

export function showAuth(notice) {
  $("boot").hidden = true;
  $("app-view").hidden = true;
  $("auth-view").hidden = false;
  document.title = "Messenger";
  const noticeEl = $("auth-notice");
  noticeEl.textContent = notice || "";
  noticeEl.hidden = !notice;
  clearError($("auth-error"));
  $("login-password").value = "";
  $("login-handle").focus();
}

async function authSubmit(mode) {
  const handle = $("login-handle").value.trim().replace(/^@/, "");
  const password = $("login-password").value;
  const displayName = $("register-display-name").value.trim();
  const errorEl = $("auth-error");
  clearError(errorEl);
  $("auth-notice").hidden = true;
  if (!handle || !password) {
    showError(errorEl, "Enter a handle and a password.");
    return;
  }
  const buttons = [$("login-button"), $("register-button")];
  buttons.forEach((b) => (b.disabled = true));
  try {
    if (mode === "register") await api.register(handle, password, displayName || undefined);
    const res = await api.login(handle, password);
    $("login-password").value = "";
    startSession({ token: res.token, user: res.user, key: randomId(12) });
  } catch (err) {
    if (mode === "login" && err instanceof api.ApiError && err.status === 401) {
      showError(errorEl, "Wrong handle or password. New here? Choose “Create account”.");
    } else {
      showError(errorEl, err);
    }
  } finally {
    buttons.forEach((b) => (b.disabled = false));
  }
}

export function bindLogin() {
  $("auth-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    // Enter submits the form: someone who filled in a display name (only used for
    // new accounts) or pressed Enter in that field means "create my account".
    const displayName = $("register-display-name");
    const wantsAccount =
      displayName.value.trim() !== "" || document.activeElement === displayName;
    authSubmit(wantsAccount ? "register" : "login");
  });
  $("register-button").addEventListener("click", () => authSubmit("register"));
}
