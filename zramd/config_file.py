"""The config file of ``zramd serve --config FILE``: TOML, one key per serve
option.

Data structure: the file is a flat TOML table.  Its keys are the rows of
the option table (options.OPTIONS), spelled with underscores
(``mem_limit``, ``backing_file``, ``metrics_address``: :func:`key_of`); no
other key is accepted, so the file, the command line, ``Settings`` and the
plugin parameters can never disagree on what exists.  Each value goes
through the row's own ``Option.from_value`` (TOML strings are parsed like
command-line text, integers and booleans must have the row's type), then
the merged settings through ``Settings.validate``'s checks across options.

Sizes may also be expressions of the machine's RAM, as in zram-generator
(``size = "min(ram / 2, 4G)"``): :func:`eval_size` is a small recursive
descent parser over ``ram``, sizes (``4G``, ``512M``, bytes), ``+ - * /``,
``min()``, ``max()`` and parentheses, in exact rational arithmetic; its
result is rounded down to whole 4 KiB pages.  Nothing is ever passed to
``eval``; length and nesting are bounded.

Relative paths in the file are relative to the file's directory (a unit's
working directory is ``/``).

A config file that someone other than its owner (ours or root's) could change is
refused: it decides where the server listens and writes.  It is opened by
safeopen.open_trusted_regular: no symbolic link on the path, every directory
ours or root's and not writable by others unless sticky, a regular file only
(a FIFO or directory is refused, never waited on).

Every error is a ``ConfigError`` of one line: the file, the key, what is
wrong.  No state, no locking.  Why: docs/design.md#config-file.
"""

from __future__ import annotations

import difflib
import os
import re
import tomllib
from fractions import Fraction

from . import safeopen
from .options import OPTIONS, ConfigError, Option
from .units import MAX_SIZE_BYTES, PAGE_SIZE, parse_size

MAX_EXPRESSION_CHARS = 200
MAX_NESTING = 16


def key_of(opt: Option) -> str:
    """The option's key in the file: its long flag with underscores."""
    return opt.name.replace("-", "_")


BY_KEY = {key_of(opt): opt for opt in OPTIONS}


def machine_ram_bytes() -> int:
    """MemTotal from /proc/meminfo, in bytes (what zram-generator calls ram)."""
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    raise ConfigError("cannot read MemTotal from /proc/meminfo")


# -- RAM-relative sizes ---------------------------------------------------------
_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d+)?\s*(?:[kmgtpe](?:i?b)?|b)?(?![a-z]))"
    r"|(?P<name>[a-z_]+)|(?P<op>[-+*/(),]))",
    re.IGNORECASE,
)


def _tokens(text: str) -> list[tuple[str, str]]:
    out, pos = [], 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise ConfigError(f"unexpected {text[pos:].strip()[:10]!r} in {text!r}")
        token_type = m.lastgroup or ""
        out.append((token_type, m.group(token_type).replace(" ", "").lower()))
        pos = m.end()
    return out


def _number(text: str) -> Fraction:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kmgtpe]?)(?:i?b)?", text)
    if not m:
        raise ConfigError(f"not a size: {text!r}")
    shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}[m.group(2)]
    return Fraction(m.group(1)) * (1 << shift)


class _Parser:
    """expr := term (('+'|'-') term)* ; term := unary (('*'|'/') unary)* ;
    unary := '-' unary | atom ; atom := NUM | 'ram' | ('min'|'max') '(' expr
    (',' expr)* ')' | '(' expr ')'"""

    def __init__(self, text: str, ram_bytes: int):
        self.text = text
        self.toks = _tokens(text)
        self.i = 0
        self.ram = ram_bytes
        self.depth = 0

    def peek(self) -> tuple[str, str] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def at(self, *values: str) -> bool:
        """Whether the next token is one of ``values``."""
        tok = self.peek()
        return tok is not None and tok[1] in values

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise ConfigError(f"{self.text!r} ends too early")
        if value is not None and tok[1] != value:
            raise ConfigError(f"expected {value!r} but found {tok[1]!r} in {self.text!r}")
        self.i += 1
        return tok

    def parse(self) -> Fraction:
        value = self.expr()
        tok = self.peek()
        if tok is not None:
            raise ConfigError(f"unexpected {tok[1]!r} in {self.text!r}")
        return value

    def expr(self) -> Fraction:
        self.depth += 1
        if self.depth > MAX_NESTING:
            raise ConfigError(f"{self.text!r} is nested too deeply")
        value = self.term()
        while self.at("+", "-"):
            op = self.take()[1]
            rhs = self.term()
            value = value + rhs if op == "+" else value - rhs
        self.depth -= 1
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while self.at("*", "/"):
            op = self.take()[1]
            rhs = self.unary()
            if op == "*":
                value *= rhs
            elif rhs == 0:
                raise ConfigError(f"division by zero in {self.text!r}")
            else:
                value /= rhs
        return value

    def unary(self) -> Fraction:
        if self.at("-"):
            self.take()
            self.depth += 1
            if self.depth > MAX_NESTING:
                raise ConfigError(f"{self.text!r} is nested too deeply")
            value = -self.unary()
            self.depth -= 1
            return value
        return self.atom()

    def atom(self) -> Fraction:
        token_type, value = self.take()
        if token_type == "num":
            return _number(value)
        if token_type == "name":
            if value == "ram":
                return Fraction(self.ram)
            if value in ("min", "max"):
                self.take("(")
                args = [self.expr()]
                while self.at(","):
                    self.take()
                    args.append(self.expr())
                self.take(")")
                return min(args) if value == "min" else max(args)
            raise ConfigError(f"unknown name {value!r} in {self.text!r} (known: ram, min, max)")
        if value == "(":
            inner = self.expr()
            self.take(")")
            return inner
        raise ConfigError(f"unexpected {value!r} in {self.text!r}")


def eval_size(text: str, ram_bytes: int) -> int:
    """A size expression (``"min(ram / 2, 4G)"``) in bytes, rounded down to
    whole 4 KiB pages.  ConfigError (one line) if it is not one."""
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ConfigError(f"size expression longer than {MAX_EXPRESSION_CHARS} characters")
    value = _Parser(text, ram_bytes).parse()
    if value < 0:
        raise ConfigError(f"{text!r} is negative ({float(value):.0f} bytes)")
    if value > MAX_SIZE_BYTES:
        raise ConfigError(f"{text!r} is larger than {MAX_SIZE_BYTES} bytes (2^63-1, NBD's limit)")
    return int(value) // PAGE_SIZE * PAGE_SIZE


def is_expression(text: str) -> bool:
    """Whether a size string needs the expression parser (a plain size
    such as ``4G`` keeps its exact meaning, and its exact error)."""
    try:
        parse_size(text)
        return False
    except ValueError:
        return bool(re.search(r"ram|min|max|[-+*/()]", text, re.IGNORECASE))


# -- the file ---------------------------------------------------------------------
def load(path: str, ram_bytes: int | None = None) -> dict:
    """``{Settings field: value}`` for every key in the file, each checked
    alone (checks across options come with ``Settings.validate``).
    ``ram_bytes`` replaces the machine's RAM (tests)."""
    try:
        fd = safeopen.open_trusted_regular(path, "config file")
        with open(fd, "rb") as f:
            doc = tomllib.load(f)
    except safeopen.UnsafePath as exc:
        raise ConfigError(exc.strerror or str(exc)) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    except ConfigError:
        raise
    except ValueError:  # an integer past Python's int-string conversion limit
        raise ConfigError(f"{path}: a number has too many digits") from None
    base = os.path.dirname(os.path.abspath(path))
    values = {}
    for key, raw in doc.items():
        opt = BY_KEY.get(key)
        if opt is None:
            close = difflib.get_close_matches(key.replace("-", "_"), BY_KEY, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            raise ConfigError(f"{path}: unknown key {key!r}{hint}")
        try:
            values[opt.field] = _value(opt, raw, base, ram_bytes)
        except ConfigError as exc:
            message = str(exc)
            if not message.startswith((key, opt.label)):
                message = f"{key}: {message}"
            raise ConfigError(f"{path}: {message}") from None
    return values


def _value(opt: Option, raw, base: str, ram_bytes: int | None):
    if isinstance(raw, (dict, list)):
        found = "table" if isinstance(raw, dict) else "list"
        raise ConfigError(f"must be a {opt.type.name}, not a {found}")
    if isinstance(raw, float) and opt.type.python is not float:
        raise ConfigError(f"must be a {opt.type.name}, not the number {raw!r}")
    if isinstance(raw, (int, bool)) and opt.type.python is str and not isinstance(raw, bool):
        raise ConfigError(f"must be a string (in quotes), not {raw!r}")
    if opt.type.name == "size" and isinstance(raw, str) and is_expression(raw):
        raw = eval_size(raw, machine_ram_bytes() if ram_bytes is None else ram_bytes)
    elif opt.type.name == "size" and type(raw) is int:
        raw = opt.parse_text(str(raw))  # bytes: the same checks as "4096" on the command line
    value = opt.from_value(raw)
    if (
        isinstance(value, str)
        and (opt.metavar == "PATH" or opt.type.name == "path")
        and not os.path.isabs(value)
    ):
        value = os.path.join(base, value)
    return value


def render(values: dict) -> str:
    """A config file (TOML) holding ``{Settings field: value}``: the inverse
    of :func:`load` for values that are not expressions."""
    by_field = {opt.field: opt for opt in OPTIONS}
    lines = []
    for field, value in values.items():
        opt = by_field[field]
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int):
            text = str(value)
        else:
            text = '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
        lines.append(f"{key_of(opt)} = {text}")
    return "\n".join(lines) + "\n"
