// Rendering, coalesced: any number of state changes in one task cost one render.

import { renderChatChrome } from "./chat.js";
import { renderList } from "./list.js";
import { refreshSenderNames } from "./messages.js";
import { state } from "./state.js";
import { renderTyping } from "./typing.js";

let renderScheduled = false;

export function scheduleRender() {
  if (renderScheduled) return;
  renderScheduled = true;
  setTimeout(() => {
    renderScheduled = false;
    if (!state.session) return;
    renderList();
    renderChatChrome();
    renderTyping();
    refreshSenderNames();
  }, 0);
}
