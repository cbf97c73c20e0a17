// The members panel of the open chat: members, rename, add, remove, leave, delete.

import * as api from "./api.js";
import { refreshConversation, removeConversation } from "./conversations.js";
import { $, clearError, h, showError } from "./dom.js";
import { onConversationUpdated, onMemberRemoved } from "./events.js";
import { loadPresence, presenceDot } from "./presence.js";
import { state } from "./state.js";
import { cacheUser, cleanHandle, findUser, userName } from "./users.js";

export function renderMembersPanel() {
  const chat = state.chat;
  const conv = chat && state.conversations.get(chat.id);
  if (!conv || $("members-panel").hidden) return;
  const isGroup = conv.kind === "group";
  const isOwner = conv.owner_id === state.me.id;
  const members = Array.isArray(conv.members) ? conv.members : [];
  $("members-list").replaceChildren(
    ...members.map((m) =>
      h(
        "li",
        { class: "member", dataset: { testid: "member", userId: String(m.user_id) } },
        presenceDot(m.user_id, "member-presence"),
        h("span", { class: "member-name", text: userName(m.user_id) }),
        m.role === "owner" ? h("span", { class: "role", text: "owner" }) : null,
        isGroup && isOwner && m.user_id !== state.me.id
          ? h("button", {
              type: "button",
              class: "link",
              text: "Remove",
              "aria-label": `Remove ${userName(m.user_id)}`,
              dataset: { testid: "remove-member-button" },
              onclick: () => removeMemberClicked(conv.id, m.user_id),
            })
          : null,
      ),
    ),
  );
  $("rename-form").hidden = !isGroup;
  $("add-member-form").hidden = !isGroup;
  $("leave-button").hidden = !isGroup;
  $("delete-conversation-button").hidden = !(isGroup && isOwner);
  if (isGroup && document.activeElement !== $("rename-title"))
    $("rename-title").value = conv.title || "";
}

async function membersAction(action) {
  const errorEl = $("members-error");
  clearError(errorEl);
  try {
    await action();
  } catch (err) {
    showError(errorEl, err);
  }
}

function removeMemberClicked(conversationId, userId) {
  membersAction(async () => {
    await api.removeMember(conversationId, userId);
    onMemberRemoved({ conversation_id: conversationId, user_id: userId, by: state.me.id });
  });
}

let deleteArmedTimer = null;

function deleteClicked() {
  const button = $("delete-conversation-button");
  const chat = state.chat;
  if (!chat) return;
  if (!button.dataset.armed) {
    // Two clicks instead of window.confirm(): works with keyboards, screen readers and
    // test drivers that dismiss dialogs.
    button.dataset.armed = "true";
    button.textContent = "Click again to delete";
    deleteArmedTimer = setTimeout(disarmDelete, 5000);
    return;
  }
  disarmDelete();
  const conversationId = chat.id;
  membersAction(async () => {
    await api.deleteConversation(conversationId);
    removeConversation(conversationId, "“{title}” was deleted.");
  });
}

function disarmDelete() {
  clearTimeout(deleteArmedTimer);
  const button = $("delete-conversation-button");
  delete button.dataset.armed;
  button.textContent = "Delete group";
}

export function bindMembers() {
  $("members-button").addEventListener("click", () => {
    const panel = $("members-panel");
    panel.hidden = !panel.hidden;
    $("members-button").setAttribute("aria-expanded", String(!panel.hidden));
    if (!panel.hidden) {
      renderMembersPanel();
      const conv = state.chat && state.conversations.get(state.chat.id);
      if (conv && Array.isArray(conv.members)) {
        loadPresence(conv.members.map((m) => m.user_id).filter((id) => id !== state.me.id));
      }
    }
  });
  $("rename-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const chat = state.chat;
    const title = $("rename-title").value.trim();
    if (!chat || !title) return;
    membersAction(async () => {
      const res = await api.renameConversation(chat.id, title);
      if (res && res.conversation) onConversationUpdated(res.conversation);
      else refreshConversation(chat.id);
    });
  });
  $("add-member-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    const chat = state.chat;
    const handle = cleanHandle($("add-member-handle").value);
    if (!chat || !handle) return;
    membersAction(async () => {
      const user = await findUser(handle);
      cacheUser(user);
      await api.addMember(chat.id, user.id);
      $("add-member-handle").value = "";
      await refreshConversation(chat.id);
    });
  });
  $("leave-button").addEventListener("click", () => {
    const chat = state.chat;
    if (!chat) return;
    const conversationId = chat.id;
    membersAction(async () => {
      await api.removeMember(conversationId, state.me.id);
      removeConversation(conversationId, "You left “{title}”.");
    });
  });
  $("delete-conversation-button").addEventListener("click", deleteClicked);
}
