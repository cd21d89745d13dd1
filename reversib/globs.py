"""Glob patterns for `ignore`: gitignore-like and anchored to the export root.

* a pattern without `/` matches a name in any folder (`*.tmp`);
* a pattern with `/` matches the whole relative path (`logs/*.log`);
* `*` and `?` never cross `/`; `**` does (`tmp/**`, `**/cache/*`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def translate(pattern: str) -> str:
    pat = pattern.lstrip("/") if "/" in pattern.rstrip("/") else pattern
    out, i = [], 0
    while i < len(pat):
        c = pat[i]
        if pat.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pat.startswith("**", i):
            out.append(".*")
            i += 2
        elif c == "*":
            out.append("[^/]*")
            i += 1
        elif c == "?":
            out.append("[^/]")
            i += 1
        elif c == "[":
            j = pat.find("]", i + 1)
            if j == -1:
                out.append(re.escape(c))
                i += 1
            else:
                body = pat[i + 1:j].replace("\\", "\\\\")
                if body.startswith("!"):
                    body = "^" + body[1:]
                out.append(f"[{body}]")
                i = j + 1
        else:
            out.append(re.escape(c))
            i += 1
    body = "".join(out)
    if pat.endswith("/"):
        body += ".*"
    if "/" not in pattern.rstrip("/"):
        return rf"(?:.*/)?{body}\Z"
    return rf"{body}\Z"


class GlobSet:
    def __init__(self, patterns: Iterable[str]):
        self.patterns = list(patterns)
        self._re = re.compile("|".join(f"(?:{translate(p)})" for p in self.patterns)) if self.patterns else None

    def match(self, path: str) -> bool:
        return bool(self._re and self._re.match(path))
