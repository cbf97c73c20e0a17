// The settings page: profile (display name), password, sessions (revoke one or all
// others), and the users this user blocked.

import * as api from "./api.js";
import { $, clearError, formatFull, h, showError } from "./dom.js";
import { scheduleRender } from "./render.js";
import { setView } from "./router.js";
import { setBlocked } from "./safety.js";
import { state } from "./state.js";
import { cacheUser } from "./users.js";

function notice(el, text) {
  el.textContent = text;
  el.hidden = false;
}

export function openSettings() {
  $("settings-view").hidden = false;
  $("chat").hidden = true;
  $("chat-placeholder").hidden = true;
  setView("chat");
  $("profile-display-name").value = (state.me && state.me.display_name) || "";
  for (const id of ["profile-message", "password-message", "sessions-error"]) {
    clearError($(id));
  }
  $("settings-title").focus();
  loadSessions();
  renderBlocked();
}

export function closeSettings() {
  if ($("settings-view").hidden) return;
  $("settings-view").hidden = true;
  if (state.chat) $("chat").hidden = false;
  else {
    $("chat-placeholder").hidden = false;
    setView("list");
  }
}

async function loadSessions() {
  const list = $("session-list");
  try {
    const res = await api.listSessions();
    list.replaceChildren(
      ...(res.sessions || []).map((s) =>
        h(
          "li",
          {
            class: "session",
            dataset: { testid: "session-item", sessionId: String(s.id), current: String(s.current) },
          },
          h("span", { class: "session-agent", text: s.user_agent || "Unknown client" }),
          h("span", {
            class: "session-used",
            text: `${s.current ? "This browser · " : ""}last used ${formatFull(s.last_used_at)}`,
          }),
          s.current
            ? null
            : h("button", {
                type: "button",
                class: "danger",
                text: "Revoke",
                dataset: { testid: "session-revoke" },
                onclick: () => revoke(s.id),
              }),
        ),
      ),
    );
  } catch (err) {
    showError($("sessions-error"), err);
  }
}

async function revoke(sessionId) {
  clearError($("sessions-error"));
  try {
    await api.revokeSession(sessionId);
  } catch (err) {
    showError($("sessions-error"), err);
  }
  loadSessions();
}

async function revokeOthers() {
  clearError($("sessions-error"));
  try {
    await api.revokeOtherSessions();
  } catch (err) {
    showError($("sessions-error"), err);
  }
  loadSessions();
}

async function profileSubmitted() {
  const el = $("profile-message");
  clearError(el);
  const name = $("profile-display-name").value.trim();
  if (!name) {
    showError(el, "Enter a display name.");
    return;
  }
  try {
    const res = await api.updateMe(name);
    state.me = res.user;
    cacheUser(res.user);
    if (state.session) state.session.user = res.user;
    $("me-name").textContent = `${res.user.display_name} (@${res.user.handle})`;
    notice(el, "Saved.");
    scheduleRender();
  } catch (err) {
    showError(el, err);
  }
}

async function passwordSubmitted() {
  const el = $("password-message");
  clearError(el);
  const current = $("password-current").value;
  const next = $("password-new").value;
  if (next.length < 8) {
    showError(el, "The new password needs at least 8 characters.");
    return;
  }
  try {
    await api.changePassword(current, next);
    $("password-current").value = "";
    $("password-new").value = "";
    notice(el, "Password changed. Your other sessions were logged out.");
    loadSessions();
  } catch (err) {
    showError(
      el,
      err instanceof api.ApiError && err.status === 403 ? "The current password is wrong." : err,
    );
  }
}

function renderBlocked() {
  const ids = [...state.blocked];
  $("blocked-empty").hidden = ids.length > 0;
  $("blocked-list").replaceChildren(
    ...ids.map((id) => {
      const user = state.users.get(id);
      return h(
        "li",
        { dataset: { testid: "blocked-item", userId: String(id) } },
        h("span", { text: user ? `${user.display_name} (@${user.handle})` : `User ${id}` }),
        h("button", {
          type: "button",
          text: "Unblock",
          dataset: { testid: "unblock-button" },
          onclick: async () => {
            await setBlocked(id, false);
            renderBlocked();
          },
        }),
      );
    }),
  );
}

export function bindSettings() {
  $("settings-button").addEventListener("click", openSettings);
  $("settings-close").addEventListener("click", closeSettings);
  $("profile-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    profileSubmitted();
  });
  $("password-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    passwordSubmitted();
  });
  $("sessions-revoke-others").addEventListener("click", revokeOthers);
}
