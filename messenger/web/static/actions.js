// What one can do to a message: reply (a quote above the new one), edit, delete and
// react, from a menu that opens by click or keyboard (Enter/Space, arrows, Escape).

import * as api from "./api.js";
import { $, clearError, h, showError } from "./dom.js";
import { state } from "./state.js";
import { userName } from "./users.js";

export const REACTION_CHOICES = ["👍", "❤️", "😂", "😮", "😢", "🙏"];

let openMenu = null; // {menu, button}

export function snippet(message) {
  if (!message) return "";
  if (message.deleted) return "Message deleted";
  const text = (message.body || "").replace(/\s+/g, " ").trim();
  if (text) return text.length > 80 ? `${text.slice(0, 80)}…` : text;
  return (message.attachments || []).length ? "📎 Attachment" : "";
}

// ---- the composer's reply and edit modes --------------------------------------------

export function startReply(message) {
  state.composing = { mode: "reply", seq: message.seq };
  renderComposerMode();
  $("message-input").focus();
}

export function startEdit(message) {
  state.composing = { mode: "edit", seq: message.seq };
  $("message-input").value = message.body;
  renderComposerMode();
  $("message-input").focus();
}

export function cancelComposing() {
  const wasEdit = state.composing && state.composing.mode === "edit";
  state.composing = null;
  if (wasEdit) $("message-input").value = "";
  renderComposerMode();
}

export function renderComposerMode() {
  const banner = $("composer-mode");
  const mode = state.composing;
  const chat = state.chat;
  if (!mode || !chat) {
    banner.hidden = true;
    banner.dataset.mode = "";
    return;
  }
  const message = chat.messages.get(mode.seq);
  banner.hidden = false;
  banner.dataset.mode = mode.mode;
  banner.dataset.testid = mode.mode === "reply" ? "composer-reply" : "composer-edit";
  $("composer-mode-text").textContent =
    mode.mode === "reply"
      ? `Replying to ${message ? userName(message.sender_id) : "a message"}: ${snippet(message)}`
      : "Editing your message (Esc cancels)";
}

/** Save the composer's text as the edit of a message; true when handled. */
export async function saveEdit(body) {
  const mode = state.composing;
  const chat = state.chat;
  if (!mode || mode.mode !== "edit" || !chat) return false;
  const message = chat.messages.get(mode.seq);
  if (!body.trim() && !(message && (message.attachments || []).length)) {
    showError($("chat-error"), "An edited message needs some text.");
    return true;
  }
  try {
    const res = await api.editMessage(chat.id, mode.seq, body);
    clearError($("chat-error"));
    cancelComposing();
    onUpdated(res.message);
  } catch (err) {
    showError($("chat-error"), err);
  }
  return true;
}

// ---- reactions and deletion ---------------------------------------------------------

export async function toggleReaction(message, emoji) {
  const mine = (message.reactions[emoji] || []).includes(state.me.id);
  try {
    const res = mine
      ? await api.removeReaction(message.conversation_id, message.seq)
      : await api.setReaction(message.conversation_id, message.seq, emoji);
    onUpdated(res.message);
  } catch (err) {
    showError($("chat-error"), err);
  }
}

async function remove(message) {
  try {
    await api.deleteMessage(message.conversation_id, message.seq);
    // The tombstone arrives as a message_updated event; show it at once too.
    onUpdated({
      ...message,
      deleted: true,
      body: "",
      reply_to: null,
      reactions: {},
      attachments: [],
    });
  } catch (err) {
    showError($("chat-error"), err);
  }
}

let updateHandler = () => {};

/** Called with every changed message this module learns of (the message list's). */
export function onMessageUpdated(handler) {
  updateHandler = handler;
}

function onUpdated(message) {
  updateHandler(message);
}

// ---- the menu -------------------------------------------------------------------------

function mayDelete(message) {
  if (message.sender_id === state.me.id) return true;
  const conv = state.conversations.get(message.conversation_id);
  return Boolean(conv && conv.kind === "group" && conv.owner_id === state.me.id);
}

export function closeMenu({ focusButton = false } = {}) {
  if (!openMenu) return;
  const { menu, button } = openMenu;
  openMenu = null;
  menu.remove();
  button.setAttribute("aria-expanded", "false");
  if (focusButton) button.focus();
}

function menuItem(label, testid, onclick, extra = {}) {
  return h("button", {
    type: "button",
    role: "menuitem",
    tabindex: "-1",
    text: label,
    dataset: { testid, ...extra },
    onclick,
  });
}

function showMenu(message, button) {
  closeMenu();
  const own = message.sender_id === state.me.id;
  let deleteArmed = false;
  const items = [
    menuItem("Reply", "menu-reply", () => {
      closeMenu();
      startReply(message);
    }),
  ];
  const reactions = h(
    "div",
    { class: "reaction-choices", role: "group", "aria-label": "React" },
    REACTION_CHOICES.map((emoji) =>
      menuItem(
        emoji,
        "reaction-option",
        () => {
          closeMenu({ focusButton: true });
          toggleReaction(message, emoji);
        },
        { emoji },
      ),
    ),
  );
  if (own) {
    items.push(
      menuItem("Edit", "menu-edit", () => {
        closeMenu();
        startEdit(message);
      }),
    );
  }
  if (mayDelete(message)) {
    const del = menuItem("Delete", "menu-delete", () => {
      if (!deleteArmed) {
        deleteArmed = true;
        del.textContent = "Delete for everyone?";
        del.classList.add("danger");
        return;
      }
      closeMenu({ focusButton: true });
      remove(message);
    });
    items.push(del);
  }
  const menu = h(
    "div",
    {
      class: "msg-menu",
      role: "menu",
      "aria-label": "Message actions",
      dataset: { testid: "message-menu" },
    },
    reactions,
    items,
  );
  menu.addEventListener("keydown", (ev) => {
    const all = [...menu.querySelectorAll('[role="menuitem"]')];
    const at = all.indexOf(document.activeElement);
    if (ev.key === "Escape") {
      ev.preventDefault();
      closeMenu({ focusButton: true });
    } else if (ev.key === "ArrowDown" || ev.key === "ArrowRight") {
      ev.preventDefault();
      all[(at + 1) % all.length].focus();
    } else if (ev.key === "ArrowUp" || ev.key === "ArrowLeft") {
      ev.preventDefault();
      all[(at - 1 + all.length) % all.length].focus();
    } else if (ev.key === "Home") {
      ev.preventDefault();
      all[0].focus();
    } else if (ev.key === "End") {
      ev.preventDefault();
      all[all.length - 1].focus();
    } else if (ev.key === "Tab") {
      closeMenu();
    }
  });
  button.after(menu);
  button.setAttribute("aria-expanded", "true");
  openMenu = { menu, button };
  // Reply first: the most common action.
  items[0].focus();
}

export function menuButton(message) {
  const button = h("button", {
    type: "button",
    class: "msg-menu-button",
    "aria-haspopup": "menu",
    "aria-expanded": "false",
    "aria-label": "Message actions",
    text: "⋯",
    dataset: { testid: "message-menu-button" },
  });
  button.addEventListener("click", (ev) => {
    ev.stopPropagation();
    if (openMenu && openMenu.button === button) closeMenu({ focusButton: true });
    else showMenu(message, button);
  });
  return button;
}

export function bindActions() {
  document.addEventListener("click", (ev) => {
    if (openMenu && !openMenu.menu.contains(ev.target)) closeMenu();
  });
  $("composer-mode-cancel").addEventListener("click", () => {
    cancelComposing();
    $("message-input").focus();
  });
  $("message-input").addEventListener("keydown", (ev) => {
    if (ev.key === "Escape" && state.composing) {
      ev.preventDefault();
      cancelComposing();
    }
  });
}
