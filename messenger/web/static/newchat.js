// The list pane's forms: start a direct chat, create a group.

import * as api from "./api.js";
import { upsertConversation } from "./conversations.js";
import { $, clearError, showError } from "./dom.js";
import { loadPresence } from "./presence.js";
import { scheduleRender } from "./render.js";
import { navigateToChat } from "./router.js";
import { state } from "./state.js";
import { cacheUser, cleanHandle, findUser } from "./users.js";

async function newDirectSubmitted() {
  const input = $("new-direct-handle");
  const errorEl = $("new-direct-error");
  const handle = cleanHandle(input.value);
  clearError(errorEl);
  if (!handle) {
    showError(errorEl, "Enter the handle of the person to write to.");
    input.focus();
    return;
  }
  const button = $("new-direct-button");
  button.disabled = true;
  try {
    const user = await findUser(handle);
    cacheUser(user);
    const res = await api.createDirect(user.id);
    upsertConversation(res.conversation);
    input.value = "";
    scheduleRender();
    loadPresence();
    navigateToChat(res.conversation.id);
  } catch (err) {
    showError(errorEl, err);
    input.focus();
  } finally {
    button.disabled = false;
  }
}

async function groupSubmitted() {
  const titleInput = $("group-title");
  const membersInput = $("group-members");
  const errorEl = $("group-error");
  clearError(errorEl);
  const title = titleInput.value.trim();
  const handles = [
    ...new Set(membersInput.value.split(",").map(cleanHandle).filter(Boolean)),
  ].filter((handle) => handle !== state.me.handle);
  if (!title) {
    showError(errorEl, "Give the group a title.");
    titleInput.focus();
    return;
  }
  const button = $("create-group-button");
  button.disabled = true;
  try {
    const users = await Promise.all(handles.map(findUser));
    users.forEach(cacheUser);
    const res = await api.createGroup(
      title,
      users.map((u) => u.id),
    );
    upsertConversation(res.conversation);
    titleInput.value = "";
    membersInput.value = "";
    $("group-details").open = false;
    scheduleRender();
    navigateToChat(res.conversation.id);
  } catch (err) {
    showError(errorEl, err);
  } finally {
    button.disabled = false;
  }
}

export function bindNewChat() {
  $("new-direct-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    newDirectSubmitted();
  });
  $("group-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    groupSubmitted();
  });
}
