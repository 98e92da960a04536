"""A simulated driver display: each connector's current message in a terminal box.

    display = ConsoleDisplay(lang="de", path=Path(".demo/display.txt"))
    agent.driver.add_display(display)     # implements agent.driver.display.Display

Every `show` redraws all connectors, to `stream` (e.g. sys.stdout) and/or `path` (the
whole screen, replaced atomically: `watch cat .demo/display.txt` follows it, tests read it).
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import TextIO

from agent.driver.select import text_in
from agent.events import DriverMessage

LEVEL_MARK = {"info": "", "warning": "! ", "error": "!! "}


def render_box(connector: int, message: DriverMessage, lang: str, width: int = 48) -> list[str]:
    """One connector's message as a box of `width` characters (text wrapped inside)."""
    headline, lines = text_in(message, lang)
    inner = width - 4
    title = f" connector {connector} · {message.status} "
    top = "┌─" + title + "─" * max(0, width - 3 - len(title)) + "┐"
    body = textwrap.wrap(LEVEL_MARK.get(message.level, "") + headline, inner) or [""]
    body.append("")
    for line in lines:
        body += textwrap.wrap(line, inner, subsequent_indent="  ") or [""]
    if message.report_url:
        body += ["", *textwrap.wrap(f"[QR] {message.report_url}", inner)]
    rows = [f"│ {text:<{inner}} │" for text in body]
    return [top, *rows, "└" + "─" * (width - 2) + "┘"]


class ConsoleDisplay:
    """The simulated display of every connector (see the module docstring)."""

    def __init__(
        self,
        lang: str = "en",
        *,
        stream: TextIO | None = None,
        path: Path | None = None,
        width: int = 48,
    ):
        self.lang = lang
        self.stream = stream
        self.path = path
        self.width = width
        self.messages: dict[int, DriverMessage] = {}

    def show(self, connector: int, message: DriverMessage) -> None:
        """Take a connector's new message and redraw."""
        self.messages[connector] = message
        text = self.render()
        if self.stream is not None:
            self.stream.write(text + "\n")
            self.stream.flush()
        if self.path is not None:
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(text + "\n", encoding="utf-8")
            os.replace(tmp, self.path)  # a reader never sees half a screen

    def render(self) -> str:
        """Every connector's box, in connector order."""
        out: list[str] = []
        for cid, msg in sorted(self.messages.items()):
            out += render_box(cid, msg, self.lang, self.width)
        return "\n".join(out)
