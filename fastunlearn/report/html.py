r"""Self-contained HTML pages from the Markdown reports (one file to mail or archive).

:func:`markdown_to_html` converts the Markdown subset that every ``fastunlearn`` report
uses: ATX headings, paragraphs, GitHub pipe tables (``\|`` in a cell is a ``|``), bullet
(``-``, ``*``, ``+``) and numbered (``1.``, ``1)``) lists, nested by indenting, block
quotes (``>``), fenced code blocks, inline code, ``**bold**``, ``*italic*`` / ``_italic_``,
images ``![alt](path)`` and links ``[text](url)``. Images found under ``base_dir`` are
embedded as ``data:`` URIs, so the page loads nothing from elsewhere; a missing image shows
its alt text and a note. Everything else is HTML-escaped: no raw HTML passes through, and
only ``http(s)``, relative and ``#`` links become links (``javascript:`` stays text).
:func:`write_html_report` converts a report file into ``<stem>.html`` beside it.
"""

from __future__ import annotations

import base64
import html
import os
import re
import string
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .._atomic_files import write_text
from .._paths import check_output_file, check_path

__all__ = ["markdown_to_html", "write_html_report"]

#: Fallback title of a page without a heading.
DEFAULT_TITLE = "fastunlearn report"

_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
  line-height: 1.5; color: #1b1b1b; background: #fff; margin: 0; }
main { max-width: 72rem; margin: 0 auto; padding: 1.5rem; }
h1, h2, h3, h4, h5, h6 { line-height: 1.25; margin: 1.5em 0 0.5em; }
h1 { border-bottom: 1px solid #d0d7de; padding-bottom: 0.3em; }
.table-wrap { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; }
th, td { border: 1px solid #d0d7de; padding: 0.3em 0.7em; vertical-align: top; }
th { background: #f3f5f7; }
tbody tr:nth-child(even) { background: #fafbfc; }
code, pre { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace;
  font-size: 0.9em; }
code { background: #f3f5f7; padding: 0.1em 0.3em; border-radius: 3px; }
pre { background: #f3f5f7; padding: 0.8em; overflow-x: auto; }
pre code { background: none; padding: 0; }
img { max-width: 100%; height: auto; }
.missing-image { color: #8a1c1c; }
""".strip()

#: Nothing but the inline style and embedded images may load (no script, no fetch).
_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

#: Private-use characters around the index of an already rendered piece of inline HTML.
_OPEN, _CLOSE = "\ue000", "\ue001"
_ATOM = re.compile(f"{_OPEN}(\\d+){_CLOSE}")

_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})(.*)$")
_BULLET = re.compile(r"^ {0,3}[-*+](?:[ \t]+(.*))?$")
_ORDERED = re.compile(r"^ {0,3}\d{1,9}[.)](?:[ \t]+(.*))?$")
#: A list item at any indentation: indent, marker, text.
_ITEM = re.compile(r"^([ \t]*)([-*+]|\d{1,9}[.)])(?:[ \t]+(.*))?$")
_QUOTE = re.compile(r"^ {0,3}> ?(.*)$")
#: Only a list numbered from 1 interrupts a paragraph ("2026. was a year" does not).
_ORDERED_ONE = re.compile(r"^ {0,3}1[.)](?:[ \t]+(.*))?$")
#: Lists and quotes nested deeper than this render as plain text (no unbounded recursion).
MAX_NESTING = 16
_DELIMITER_CELL = re.compile(r"^:?-+:?$")

_STRONG = re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*")
_EM_STAR = re.compile(r"\*(?=[^\s*])(.+?)(?<=[^\s*])\*")
_EM_UNDERSCORE = re.compile(r"(?<!\w)_(?=[^\s_])(.+?)(?<=[^\s_])_(?!\w)")
_TAG = re.compile(r"<[^>]*>")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")
_TITLE_SUFFIX = re.compile(r"^(\S.*?)\s+(?:\"[^\"]*\"|'[^']*')$")

#: File signatures of the images embedded, and their MIME types.
_IMAGE_TYPES = ((b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
                (b"GIF87a", "image/gif"), (b"GIF89a", "image/gif"))


@dataclass
class _Context:
    """What the inline renderer needs: the image folder and the rendered pieces."""

    base_dir: Path | None
    atoms: list[str] = field(default_factory=list)
    depth: int = 0  # lists and quotes the renderer is inside
    missing: list[str] = field(default_factory=list)  # images not embedded (with why)

    def atom(self, markup: str) -> str:
        """Store finished ``markup``; return the placeholder that stands for it."""
        self.atoms.append(markup)
        return f"{_OPEN}{len(self.atoms) - 1}{_CLOSE}"

    def restore(self, text: str) -> str:
        """Replace every placeholder in ``text`` by its markup."""
        return _ATOM.sub(lambda m: self.atoms[int(m.group(1))], text)


# ---- inline ---------------------------------------------------------------------------------


def _code_span(text: str, start: int, ctx: _Context) -> tuple[str, int] | None:
    """Parse the code span opened by the backtick run at ``start``; None when unclosed."""
    run = len(text) - len(text[start:].lstrip("`"))
    ticks = run - start
    for m in re.finditer("`+", text[run:]):
        if len(m.group(0)) == ticks:
            body = text[run:run + m.start()].replace("\n", " ")
            if body.startswith(" ") and body.endswith(" ") and body.strip(" "):
                body = body[1:-1]
            return ctx.atom(f"<code>{html.escape(body)}</code>"), run + m.end()
    return None


def _closing(text: str, start: int, pair: str, *, one_line: bool) -> int | None:
    """Index of the ``pair[1]`` that closes the ``pair[0]`` at ``start``, or None.

    Nested pairs are balanced and backslash escapes skipped; with ``one_line`` a newline
    before the close means there is none (a link's destination stays on its line).
    """
    opening, closing = pair[0], pair[1]
    depth, i = 0, start
    while i < len(text):
        c = text[i]
        if c == "\\":
            i += 2
            continue
        if one_line and c == "\n":
            return None
        if c == opening:
            depth += 1
        elif c == closing:
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _link_parts(text: str, start: int) -> tuple[str, str, int] | None:
    """Parse ``[label](destination)`` at ``start``: ``(label, destination, end)`` or None."""
    close = _closing(text, start, "[]", one_line=False)
    if close is None or not text.startswith("(", close + 1):
        return None
    end = _closing(text, close + 1, "()", one_line=True)
    if end is None:
        return None
    dest = text[close + 2:end].strip()
    if dest.startswith("<") and dest.endswith(">"):
        dest = dest[1:-1]
    return text[start + 1:close], dest, end + 1


def _unescape(text: str) -> str:
    r"""Drop the backslash of Markdown escapes (``\*`` -> ``*``)."""
    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", text)


def _safe_href(url: str) -> bool:
    """Whether ``url`` may become a link: http(s), a relative path or a ``#`` anchor."""
    # browsers drop controls and whitespace inside URLs ("java\tscript:")
    cleaned = "".join(c for c in url if c.isprintable() and not c.isspace())
    if not cleaned:
        return False
    if cleaned[:2].replace("\\", "/") == "//":  # protocol-relative: another host
        return False
    scheme = _SCHEME.match(cleaned)
    return scheme is None or scheme.group(1).lower() in ("http", "https")


def _title_stripped(dest: str) -> str:
    """``dest`` without a trailing ``"title"`` (``path "title"`` -> ``path``)."""
    m = _TITLE_SUFFIX.match(dest)
    return m.group(1) if m else dest


def _image_file(dest: str, base_dir: Path | None) -> bytes | None:
    """Bytes of the image file ``dest`` under ``base_dir``; None if it is not there."""
    if base_dir is None or not dest or _SCHEME.match(dest) or dest[:2] in ("//", "\\\\"):
        return None
    try:
        base = base_dir.resolve()
        for candidate in dict.fromkeys((dest, _unescape(dest), _title_stripped(dest))):
            target = (base / candidate).resolve()
            if target.is_relative_to(base) and target.is_file():
                return target.read_bytes()
    except (OSError, ValueError):  # unreadable, a NUL in the name, a loop of links
        return None
    return None


def _image(alt: str, dest: str, ctx: _Context) -> str:
    """Render an ``<img>`` with the file embedded, or the alt text and a note."""
    alt_text = _unescape(alt)
    data = _image_file(dest, ctx.base_dir)
    mime = next((kind for magic, kind in _IMAGE_TYPES if data and data.startswith(magic)),
                None)
    if data is None or mime is None:
        why = "image not found" if data is None else "not a PNG, JPEG or GIF image"
        ctx.missing.append(f"{dest} ({why})")
        return (f'<span class="missing-image">{html.escape(alt_text)} '
                f"<em>({why}: {html.escape(dest)})</em></span>")
    uri = f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"
    return f'<img src="{uri}" alt="{html.escape(alt_text)}">'


def _link(label: str, dest: str, source: str, ctx: _Context) -> str:
    """Render an ``<a>`` for a safe destination; the Markdown source as text otherwise."""
    if not _safe_href(dest):
        return html.escape(source)
    return f'<a href="{html.escape(dest)}">{_inline(label, ctx, links=False)}</a>'


def _emphasis(text: str, ctx: _Context) -> str:
    """Turn ``**x**``, ``*x*`` and ``_x_`` of escaped ``text`` into well-nested tags."""
    def wrap(tag: str) -> Callable[[re.Match[str]], str]:
        return lambda m: ctx.atom(f"<{tag}>{ctx.restore(_emphasis(m.group(1), ctx))}</{tag}>")

    text = _STRONG.sub(wrap("strong"), text)
    text = _EM_STAR.sub(wrap("em"), text)
    return _EM_UNDERSCORE.sub(wrap("em"), text)


def _inline(text: str, ctx: _Context, *, links: bool = True) -> str:
    """Render inline Markdown: code, escapes, images, links and emphasis; escape the rest."""
    text = text.replace(_OPEN, "\ufffd").replace(_CLOSE, "\ufffd")
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        parsed: tuple[str, int] | None = None
        if c == "\\" and i + 1 < len(text) and text[i + 1] in string.punctuation:
            parsed = ctx.atom(html.escape(text[i + 1])), i + 2
        elif c == "`":
            parsed = _code_span(text, i, ctx)
            if parsed is None:  # an unclosed run is literal text, all of it
                run = len(text) - len(text[i:].lstrip("`"))
                parsed = text[i:run], run
        elif c == "!" and text.startswith("[", i + 1):
            parts = _link_parts(text, i + 1)
            if parts is not None:
                parsed = ctx.atom(_image(parts[0], parts[1], ctx)), parts[2]
        elif c == "[" and links:
            parts = _link_parts(text, i)
            if parts is not None:
                parsed = ctx.atom(_link(parts[0], parts[1], text[i:parts[2]], ctx)), parts[2]
        if parsed is None:
            parsed = c, i + 1
        out.append(parsed[0])
        i = parsed[1]
    return ctx.restore(_emphasis(html.escape("".join(out)), ctx))


# ---- blocks ---------------------------------------------------------------------------------


def _split_row(line: str) -> list[str]:
    r"""Split a pipe-table row into cells; ``\|`` is a ``|`` inside a cell (code spans too)."""
    row = line.strip()
    if row.startswith("|"):
        row = row[1:]
    if row.endswith("|") and not row.endswith("\\|"):
        row = row[:-1]
    cells = re.split(r"(?<!\\)\|", row)
    return [cell.replace("\\|", "|").strip() for cell in cells]


def _alignments(line: str) -> list[str] | None:
    """Alignments of a table's delimiter row (``|---|:--:|``), or None if it is not one."""
    if "-" not in line:
        return None
    cells = _split_row(line)
    if not all(_DELIMITER_CELL.match(cell) for cell in cells):
        return None
    return ["center" if c.startswith(":") and c.endswith(":") else "right" if c.endswith(":")
            else "left" if c.startswith(":") else "" for c in cells]


def _is_table_start(lines: list[str], i: int) -> bool:
    if "|" not in lines[i] or i + 1 >= len(lines):
        return False
    aligns = _alignments(lines[i + 1])
    return aligns is not None and len(aligns) == len(_split_row(lines[i]))


def _starts_block(lines: list[str], i: int) -> bool:
    """Whether line ``i`` opens a block that ends a paragraph."""
    line = lines[i]
    return bool(_HEADING.match(line) or _FENCE.match(line) or _BULLET.match(line)
                or _ORDERED_ONE.match(line) or _QUOTE.match(line)
                or _is_table_start(lines, i))


def _cell_tag(tag: str, align: str, content: str) -> str:
    style = f' style="text-align: {align}"' if align else ""
    return f"<{tag}{style}>{content}</{tag}>"


def _table(lines: list[str], i: int, ctx: _Context) -> tuple[str, int]:
    aligns = _alignments(lines[i + 1]) or []
    width = len(aligns)

    def row(line: str, tag: str) -> str:
        cells = (_split_row(line) + [""] * width)[:width]
        return "<tr>" + "".join(_cell_tag(tag, a, _inline(c, ctx))
                                for a, c in zip(aligns, cells, strict=True)) + "</tr>"

    head = row(lines[i], "th")
    body, j = [], i + 2
    while j < len(lines) and lines[j].strip() and not (
            _HEADING.match(lines[j]) or _FENCE.match(lines[j])):
        body.append(row(lines[j], "td"))
        j += 1
    tbody = f"\n<tbody>\n{chr(10).join(body)}\n</tbody>" if body else ""
    return (f'<div class="table-wrap"><table>\n<thead>\n{head}\n</thead>{tbody}\n'
            "</table></div>"), j


def _code_block(lines: list[str], i: int) -> tuple[str, int]:
    m = _FENCE.match(lines[i])
    assert m is not None
    fence, info = m.group(1), m.group(2).strip()
    body, j = [], i + 1
    while j < len(lines):
        close = lines[j].strip()
        if close.startswith(fence[0] * len(fence)) and not close.strip(fence[0]):
            j += 1
            break
        body.append(lines[j])
        j += 1
    language = info.split()[0] if info else ""
    cls = f' class="language-{html.escape(language)}"' if language else ""
    code = html.escape("\n".join(body) + ("\n" if body else ""))
    return f"<pre><code{cls}>{code}</code></pre>", j


def _indent(line: str) -> int:
    return len(line.expandtabs(4)) - len(line.expandtabs(4).lstrip())


def _list(lines: list[str], i: int, ctx: _Context, used: set[str]) -> tuple[str, int]:
    """Render the list opening at line ``i`` (its items' deeper lines render as blocks)."""
    first = _ITEM.match(lines[i])
    assert first is not None
    ordered = first.group(2)[0].isdigit()
    indent = _indent(lines[i])

    def same_list(m: re.Match[str] | None, line: str) -> bool:
        return (m is not None and _indent(line) <= indent + 1
                and m.group(2)[0].isdigit() == ordered)

    items: list[list[str]] = []
    j = i
    while j < len(lines):
        line = lines[j]
        m = _ITEM.match(line)
        if same_list(m, line):
            assert m is not None
            items.append([m.group(3) or ""])
        elif not line.strip():  # a blank line: the list goes on if what follows belongs
            k = j + 1
            while k < len(lines) and not lines[k].strip():
                k += 1
            if k < len(lines) and same_list(_ITEM.match(lines[k]), lines[k]):
                j = k  # the next item
                continue
            if k < len(lines) and _indent(lines[k]) > indent + 1:
                items[-1].append("")  # the item goes on after a blank line
                j = k
                continue
            break
        elif _indent(line) > indent + 1:  # an indented line: part of the item
            items[-1].append(line)
        elif not _starts_block(lines, j):  # an unindented continuation of the item's text
            items[-1].append(line.strip())
        else:
            break
        j += 1
    rendered = "\n".join(f"<li>{_list_item(item, ctx, used)}</li>" for item in items)
    start = int(first.group(2)[:-1]) if ordered else 1
    tag = "ol" if ordered else "ul"
    attr = f' start="{start}"' if start != 1 else ""
    return f"<{tag}{attr}>\n{rendered}\n</{tag}>", j


def _list_item(item: list[str], ctx: _Context, used: set[str]) -> str:
    """Render an item: its text inline, what is nested in it (lists, quotes) as blocks.

    An item whose text runs over a blank line renders as paragraphs.
    """
    text, rest = [item[0]], item[1:]
    nested = [ln.strip() and (_ITEM.match(ln) or _QUOTE.match(ln.strip())
                              or _FENCE.match(ln.strip())) for ln in rest]
    cut = next((n for n, flag in enumerate(nested) if flag), len(rest))
    if "" in rest[:cut]:  # a loose item: paragraphs (and the nested blocks after them)
        return _nested([item[0], *_dedent(rest)], ctx, used)
    text += [ln.strip() for ln in rest[:cut]]
    inline = _inline("\n".join(text).strip(), ctx)
    if cut == len(rest):
        return inline
    return inline + "\n" + _nested(_dedent(rest[cut:]), ctx, used)


def _nested(lines: list[str], ctx: _Context, used: set[str]) -> str:
    """Render the blocks inside a list item or quote; past ``MAX_NESTING``, as one paragraph."""
    if ctx.depth >= MAX_NESTING:
        return f"<p>{_inline(chr(10).join(ln.strip() for ln in lines if ln.strip()), ctx)}</p>"
    ctx.depth += 1
    try:
        return "\n".join(_render(lines, ctx, used)[0])
    finally:
        ctx.depth -= 1


def _dedent(block: list[str]) -> list[str]:
    """Remove the indentation the non-blank lines of ``block`` share (tabs as 4 spaces)."""
    depth = min((_indent(ln) for ln in block if ln.strip()), default=0)
    return [ln.expandtabs(4)[depth:] if ln.strip() else "" for ln in block]


def _quote(lines: list[str], i: int, ctx: _Context, used: set[str]) -> tuple[str, int]:
    """Render the block quote opening at line ``i`` (its content renders as blocks)."""
    inner, j = [], i
    while j < len(lines):
        m = _QUOTE.match(lines[j])
        if m:
            inner.append(m.group(1))
        elif lines[j].strip() and inner and inner[-1].strip() and not _starts_block(lines, j):
            inner.append(lines[j].strip())  # a lazy continuation of the quoted paragraph
        else:
            break
        j += 1
    body = _nested(inner, ctx, used)
    return f"<blockquote>\n{body}\n</blockquote>", j


def _paragraph(lines: list[str], i: int, ctx: _Context) -> tuple[str, int]:
    body, j = [lines[i].strip()], i + 1
    while j < len(lines) and lines[j].strip() and not _starts_block(lines, j):
        body.append(lines[j].strip())
        j += 1
    return f"<p>{_inline(chr(10).join(body), ctx)}</p>", j


def _slug(markup: str, used: set[str]) -> str:
    """Return a unique ``id`` for a heading (lower-case words joined by ``-``)."""
    words = re.findall(r"\w+", html.unescape(_TAG.sub("", markup)).lower())
    base = "-".join(words) or "section"
    slug, n = base, 1
    while slug in used:
        slug, n = f"{base}-{n}", n + 1
    used.add(slug)
    return slug


def _blocks(text: str, ctx: _Context) -> tuple[list[str], str | None]:
    """Render the blocks of ``text``; return them and the first heading's text (escaped)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return _render(lines, ctx, set())


def _render(lines: list[str], ctx: _Context, used: set[str]) -> tuple[list[str], str | None]:
    """Render ``lines`` as blocks (``used``: the heading ids taken so far)."""
    out: list[str] = []
    first_heading: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        heading = _HEADING.match(line)
        if not line.strip():
            i += 1
            continue
        if heading:
            level, content = len(heading.group(1)), _inline(heading.group(2) or "", ctx)
            if first_heading is None:
                first_heading = " ".join(_TAG.sub("", content).split())
            out.append(f'<h{level} id="{_slug(content, used)}">{content}</h{level}>')
            i += 1
        elif _FENCE.match(line):
            block, i = _code_block(lines, i)
            out.append(block)
        elif _is_table_start(lines, i):
            block, i = _table(lines, i, ctx)
            out.append(block)
        elif _BULLET.match(line) or _ORDERED.match(line):
            block, i = _list(lines, i, ctx, used)
            out.append(block)
        elif _QUOTE.match(line):
            block, i = _quote(lines, i, ctx, used)
            out.append(block)
        else:
            block, i = _paragraph(lines, i, ctx)
            out.append(block)
    return out, first_heading


def markdown_to_html(
    text: str,
    *,
    base_dir: str | os.PathLike[str] | None = None,
    title: str | None = None,
) -> str:
    """Convert a Markdown report to one self-contained HTML5 page.

    Supports the subset the ``fastunlearn`` reports use (see the module docstring). Every
    piece of text is HTML-escaped; only ``http(s)``, relative and ``#`` links become links.

    Args:
        text: The Markdown text.
        base_dir: Folder that relative image paths are resolved in (the report's folder).
            Images found under it are embedded as ``data:`` URIs; images elsewhere, or all
            images when ``base_dir`` is None, are shown as their alt text with a note.
        title: The page title; by default the text of the first heading (or
            ``"fastunlearn report"`` without one).

    Returns:
        The HTML document.

    Raises:
        TypeError: ``text`` or ``title`` is not a str, or ``base_dir`` not a path.
        ValueError: ``base_dir`` is empty.

    """
    if not isinstance(text, str):
        raise TypeError(f"'text' must be a str, got {type(text).__name__}")
    if title is not None and not isinstance(title, str):
        raise TypeError(f"'title' must be a str or None, got {type(title).__name__}")
    base = None if base_dir is None else check_path(base_dir, "base_dir")
    ctx = _Context(base)
    blocks, first_heading = _blocks(text, ctx)
    if base is not None and ctx.missing:  # asked to embed them: say which could not be
        shown = ", ".join(ctx.missing[:5]) + (f" and {len(ctx.missing) - 5} more"
                                               if len(ctx.missing) > 5 else "")
        warnings.warn(f"{len(ctx.missing)} image(s) not embedded (shown as their alt text): "
                      f"{shown}", RuntimeWarning, stacklevel=2)
    page_title = html.escape(" ".join(title.split())) if title is not None else first_heading
    return "\n".join([
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        '<meta name="generator" content="fastunlearn">',
        f"<title>{page_title or DEFAULT_TITLE}</title>",
        f"<style>\n{_CSS}\n</style>",
        "</head>",
        "<body>",
        "<main>",
        *blocks,
        "</main>",
        "</body>",
        "</html>",
        "",
    ])


def write_html_report(
    markdown_path: str | os.PathLike[str],
    html_path: str | os.PathLike[str] | None = None,
) -> Path:
    """Convert a Markdown report file to a self-contained HTML file.

    Images are resolved relative to the folder of ``markdown_path`` and embedded; the file
    is written atomically (whole or not at all).

    Args:
        markdown_path: The ``.md`` report.
        html_path: Where to write; by default ``<same stem>.html`` beside the report.
            Missing folders above it are created.

    Returns:
        The path written.

    Raises:
        FileNotFoundError: ``markdown_path`` does not exist.
        TypeError: A path is not a str or ``os.PathLike``.
        ValueError: A path is empty or a folder, ``html_path`` is the report itself or lies
            below a file, or the report is not UTF-8 text.

    """
    source = check_path(markdown_path, "markdown_path")
    if source.is_dir():
        raise ValueError(f"'markdown_path' {str(source)!r} is a folder, expected a Markdown "
                         "file")
    if not source.exists():
        raise FileNotFoundError(f"'markdown_path' {str(source)!r} does not exist")
    target = source.with_suffix(".html") if html_path is None else html_path
    out = check_output_file(target, "html_path", create_parents=True)
    if out.exists() and os.path.samefile(out, source):
        raise ValueError(f"'html_path' {str(out)!r} is the Markdown report itself")
    try:
        text = source.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"'markdown_path' {str(source)!r} is not UTF-8 text: {exc}") from None
    page = markdown_to_html(text, base_dir=source.resolve().parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    return write_text(out, page)
