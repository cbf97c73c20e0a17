// Which pane shows: the #/c/<id> route, and the list/chat view on narrow screens.

import { closeChat, openChat } from "./chat.js";
import { $ } from "./dom.js";
import { state } from "./state.js";

export function setView(view) {
  $("app-view").dataset.view = view;
}

export function navigateToChat(conversationId) {
  const target = `#/c/${conversationId}`;
  if (location.hash === target) {
    route();
    return;
  }
  state.chatPushed = true;
  location.hash = target; // hashchange -> route()
}

export function route() {
  if (!state.session) return;
  const match = /^#\/c\/(\d+)$/.exec(location.hash);
  if (match) {
    openChat(Number(match[1]));
  } else {
    const leaving = state.chat ? state.chat.id : null;
    closeChat();
    state.chatPushed = false;
    if (leaving !== null) {
      const button = document.querySelector(
        `#conversation-list button[data-conversation-id="${leaving}"]`,
      );
      if (button) button.focus();
    }
  }
}

export function bindRouter() {
  $("back-button").addEventListener("click", () => {
    if (state.chatPushed && history.length > 1) history.back();
    else location.hash = "#/";
  });
  window.addEventListener("hashchange", route);
}
