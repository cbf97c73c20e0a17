// The conversation list pane: one button per conversation, updated in place.

import { attachmentsSummary } from "./attachments.js";
import {
  conversationTitle,
  loadConversations,
  peerId,
  sortedConversations,
} from "./conversations.js";
import { $, formatTime, h } from "./dom.js";
import { presenceDot } from "./presence.js";
import { scheduleRender } from "./render.js";
import { navigateToChat } from "./router.js";
import { requestActions } from "./safety.js";
import { state } from "./state.js";
import { userName } from "./users.js";

export function renderList() {
  const convs = sortedConversations();
  // Message requests get a section of their own (with Accept / Block / Delete);
  // the main list shows the others: archived ones, or the rest.
  const requests = state.archivedView
    ? []
    : convs.filter((c) => c.request && !c.archived);
  const main = convs.filter(
    (c) => !requests.includes(c) && Boolean(c.archived) === state.archivedView,
  );
  fillList($("conversation-list"), main, null);
  fillList($("request-list"), requests, requestActions);
  $("requests-section").hidden = requests.length === 0;
  $("requests-count").textContent = String(requests.length);
  $("conversation-empty").hidden = main.length > 0;
  $("conversation-empty").textContent = state.archivedView
    ? "No archived conversations."
    : "No conversations yet. Start one above.";
  $("archived-toggle").textContent = state.archivedView ? "Back to chats" : "Archived";
  $("archived-toggle").setAttribute("aria-pressed", String(state.archivedView));
  $("load-more-conversations").hidden = state.listNext === null;
}

function fillList(ul, convs, actions) {
  const focusedId = document.activeElement && document.activeElement.dataset.conversationId;
  const existing = new Map([...ul.children].map((li) => [Number(li.dataset.conversationId), li]));
  const wanted = [];
  for (const conv of convs) {
    let li = existing.get(conv.id);
    if (!li) {
      li = h("li", { dataset: { conversationId: String(conv.id) } });
      li.append(
        h("button", {
          type: "button",
          class: "conv",
          dataset: { testid: "conversation-item", conversationId: String(conv.id) },
          onclick: () => navigateToChat(conv.id),
        }),
      );
      if (actions) li.append(actions(conv));
    }
    fillConversationButton(li.firstElementChild, conv);
    wanted.push(li);
  }
  // Reorder in place so that unchanged items (and focus) are left alone.
  wanted.forEach((li, index) => {
    if (ul.children[index] !== li) ul.insertBefore(li, ul.children[index] || null);
  });
  const keep = new Set(convs.map((c) => c.id));
  for (const [id, li] of existing) if (!keep.has(id)) li.remove();
  if (focusedId && document.activeElement === document.body) {
    const again = ul.querySelector(`button[data-conversation-id="${focusedId}"]`);
    if (again) again.focus();
  }
}

function fillConversationButton(button, conv) {
  const unread = conv.unread_count || 0;
  const last = conv.last_message;
  let preview = "No messages yet";
  if (last) {
    const prefix =
      last.sender_id === state.me.id
        ? "You: "
        : conv.kind === "group"
          ? `${userName(last.sender_id)}: `
          : "";
    const text = last.deleted
      ? "Message deleted"
      : (last.body || "").replace(/\s+/g, " ") || attachmentsSummary(last);
    preview = prefix + text;
  }
  const peer = peerId(conv);
  const typers = state.typing.get(conv.id);
  if (typers && typers.size) preview = "typing…";
  button.dataset.kind = conv.kind;
  button.dataset.unread = String(unread);
  if (state.chat && state.chat.id === conv.id) button.setAttribute("aria-current", "page");
  else button.removeAttribute("aria-current");
  button.replaceChildren(
    h(
      "span",
      { class: "conv-top" },
      peer !== null ? presenceDot(peer) : null,
      h("span", {
        class: "conv-title",
        text: conversationTitle(conv),
        dataset: { testid: "conversation-title" },
      }),
      last
        ? h("time", {
            class: "conv-time",
            datetime: last.created_at,
            text: formatTime(last.created_at),
          })
        : null,
    ),
    h(
      "span",
      { class: "conv-bottom" },
      h("span", {
        class: "conv-preview",
        text: preview,
        dataset: { testid: "conversation-preview" },
      }),
      unread > 0
        ? h(
            "span",
            { class: "badge", dataset: { testid: "unread-badge" } },
            h("span", { "aria-hidden": "true", text: unread > 999 ? "999+" : String(unread) }),
            h("span", { class: "visually-hidden", text: `${unread} unread` }),
          )
        : null,
    ),
  );
}

export function bindList() {
  $("load-more-conversations").addEventListener("click", () => loadConversations({ reset: false }));
  $("archived-toggle").addEventListener("click", () => {
    state.archivedView = !state.archivedView;
    state.listNext = null;
    loadConversations({ reset: true });
    scheduleRender();
  });
}
