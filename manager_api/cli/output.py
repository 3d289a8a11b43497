"""How commands print: JSON and messages as plain text on stdout, tables through rich,
the upload progress bar on stderr."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import IO, Any

from rich.console import Console, RenderableType
from rich.progress import BarColumn, DownloadColumn, Progress, TaskProgressColumn, TextColumn
from rich.table import Table
from rich.text import Text

#: Console width: rows are never wrapped or cut by the table (a terminal wraps long lines
#: itself, as it does for any command; a script reads whole rows).
UNWRAPPED_WIDTH = 10_000

#: Table columns as (key in the record, header).
Columns = Sequence[tuple[str, str]]


def cell(value: Any) -> str:
    """One value as table text: ``-`` for nothing, ``k=v,...`` for a mapping."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(str(v) for v in value) or "-"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _console(stream: IO[str]) -> Console:
    # NOTE: markup, emoji and highlighting off: cells are the server's data, printed as is;
    # styles (bold headers) only on a terminal.
    return Console(
        file=stream,
        width=UNWRAPPED_WIDTH,
        markup=False,
        emoji=False,
        highlight=False,
    )


class Output:
    """Where a command prints; ``as_json`` is the ``--json`` flag."""

    def __init__(self, stdout: IO[str], stderr: IO[str], as_json: bool) -> None:
        self.stdout = stdout
        self.as_json = as_json
        self.console = _console(stdout)
        self.err_console = _console(stderr)

    def write(self, text: str) -> None:
        self.stdout.write(text + ("" if text.endswith("\n") else "\n"))

    def json(self, value: Any) -> None:
        self.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")

    def _render(self, renderable: RenderableType) -> None:
        with self.console.capture() as captured:
            self.console.print(renderable)
        # NOTE: rich pads every cell to its column's width; trailing blanks help nobody.
        self.stdout.write("".join(f"{line.rstrip()}\n" for line in captured.get().splitlines()))

    def table(self, rows: Sequence[dict[str, Any]], columns: Columns) -> None:
        """``rows`` as an aligned table."""
        if not rows:
            self.stdout.write("(none)\n")
            return
        grid = Table(box=None, pad_edge=False, padding=(0, 2, 0, 0))
        for _, header in columns:
            grid.add_column(header)
        for row in rows:
            grid.add_row(*(Text(cell(row.get(key))) for key, _ in columns))
        self._render(grid)

    def details(self, obj: dict[str, Any]) -> None:
        """``key  value`` lines (nested lists of records are left to a table)."""
        grid = Table.grid(padding=(0, 2, 0, 0))
        grid.add_column()
        grid.add_column()
        for key, value in obj.items():
            if not (isinstance(value, list) and value and isinstance(value[0], dict)):
                grid.add_row(Text(key), Text(cell(value)))
        self._render(grid)

    def show(self, result: Any, columns: Columns | None = None) -> None:
        """A list as a table, a record as details, nothing as ``ok``; JSON with ``--json``."""
        if self.as_json:
            self.json(result)
        elif isinstance(result, list) and columns is not None:
            self.table(result, columns)
        elif isinstance(result, dict):
            self.details(result)
        elif result is None:
            self.write("ok")

    def done(self, message: str, result: Any = None) -> None:
        """``message`` for people; with ``--json`` the result (or ``{"ok": true, ...}``)."""
        if not self.as_json:
            self.write(message)
        elif result is not None:
            self.json(result)
        else:
            self.stdout.write(json.dumps({"ok": True, "message": message}) + "\n")

    def progress(self) -> Progress:
        """An upload progress bar on stderr (drawn once, at the end, when not a terminal)."""
        return Progress(
            TextColumn("uploading {task.description}"),
            BarColumn(),
            TaskProgressColumn(),
            DownloadColumn(binary_units=True),
            console=self.err_console,
        )
