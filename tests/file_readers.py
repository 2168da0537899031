"""How the programs that read the kit's files read them, in Python: for the input fuzz, which
checks thousands of rendered files in seconds. tests/e2e/test_readers.py holds each of these
against the real program on a test host (sh, systemd, nginx), so they cannot drift into
agreeing with the kit instead of with the reader.

- systemd_env: systemd's EnvironmentFile= parser (src/basic/env-file.c, its state machine).
- sh_env: what `set -a; . file` assigns, for files of NAME=word lines; None for a line sh
  would run as anything but one plain assignment (a command, an expansion, an operator).
- dotenv_env: python-dotenv itself (with its default ${VAR} interpolation).
- nginx_structure: nginx's tokenizer (ngx_conf_read_token) reduced to the directive tree.
- unit_structure: a systemd unit file's sections and keys, and how many words ExecStart= has.
- exec_words: the words systemd runs for an ExecStart= value (quotes, C escapes, %% and $$).
- supervisor_programs: supervisord's own parser (the supervisor package: inline `;` and `#`
  comments after white space, %-expansions), and the words of each program's command=.
"""

from __future__ import annotations

import configparser
import io
import shlex

from dotenv import dotenv_values

NEWLINE = "\n\r"
WHITESPACE = " \t\n\r"
SHELL_NEED_ESCAPE = '"\\`$'


class Unparsable(ValueError):
    """The reader would not read the file as plain data (sh would run code, nginx would fail)."""


# -- env files ---------------------------------------------------------------------------------


def systemd_env(text: str) -> dict[str, str]:
    """systemd's load_env_file(): states PRE_KEY, KEY, PRE_VALUE, VALUE(_ESCAPE),
    SINGLE_QUOTE_VALUE, DOUBLE_QUOTE_VALUE(_ESCAPE), COMMENT(_ESCAPE)."""
    result: dict[str, str] = {}
    state, key, value = "PRE_KEY", "", ""
    last_ws = 0  # trailing whitespace of an unquoted value, dropped at its end

    def push() -> None:
        name = key.rstrip(WHITESPACE)
        if (
            name
            and (name[0].isalpha() or name[0] == "_")
            and all(c.isalnum() or c == "_" for c in name)
        ):
            result[name] = value

    for c in text + "\n":
        if state == "PRE_KEY":
            if c in "#;":
                state = "COMMENT"
            elif c not in WHITESPACE:
                state, key = "KEY", c
        elif state == "KEY":
            if c in NEWLINE:
                state, key = "PRE_KEY", ""
            elif c == "=":
                state, value = "PRE_VALUE", ""
            else:
                key += c
        elif state == "PRE_VALUE":
            if c in NEWLINE:
                push()
                state, key = "PRE_KEY", ""
            elif c == "'":
                state = "SINGLE_QUOTE_VALUE"
            elif c == '"':
                state = "DOUBLE_QUOTE_VALUE"
            elif c == "\\":
                state = "VALUE_ESCAPE"
            elif c not in WHITESPACE:
                state, value, last_ws = "VALUE", value + c, 0
        elif state == "VALUE":
            if c in NEWLINE:
                if last_ws:
                    value = value[:-last_ws]
                push()
                state, key, last_ws = "PRE_KEY", "", 0
            elif c == "\\":
                state, last_ws = "VALUE_ESCAPE", 0
            else:
                value += c
                last_ws = last_ws + 1 if c in WHITESPACE else 0
        elif state == "VALUE_ESCAPE":
            state = "VALUE"
            if c not in NEWLINE:
                value += c
        elif state == "SINGLE_QUOTE_VALUE":
            if c == "'":
                state = "PRE_VALUE"
            else:
                value += c
        elif state == "DOUBLE_QUOTE_VALUE":
            if c == '"':
                state = "PRE_VALUE"
            elif c == "\\":
                state = "DOUBLE_QUOTE_VALUE_ESCAPE"
            else:
                value += c
        elif state == "DOUBLE_QUOTE_VALUE_ESCAPE":
            state = "DOUBLE_QUOTE_VALUE"
            if c in SHELL_NEED_ESCAPE:
                value += c
            elif c != "\n":
                value += "\\" + c
        elif state == "COMMENT":
            if c == "\\":
                state = "COMMENT_ESCAPE"
            elif c in NEWLINE:
                state = "PRE_KEY"
        elif state == "COMMENT_ESCAPE":
            state = "COMMENT"
    return result


_SH_SPECIAL = set("|&;<>()$`\\\"' \t*?[#~=%{}")


def sh_env(text: str) -> dict[str, str]:
    """`set -a; . file` for a file of comments, blank lines and NAME=word lines. Raises
    Unparsable where sh would do anything else: run a command, expand, glob, redirect."""
    result: dict[str, str] = {}
    for number, line in enumerate(text.split("\n"), start=1):
        stripped = line.lstrip(" \t")
        if not stripped or stripped.startswith("#"):
            continue
        name, eq, word = stripped.partition("=")
        if not eq or not name or not (name[0].isalpha() or name[0] == "_"):
            raise Unparsable(f"line {number}: not an assignment")
        if not all(c.isalnum() or c == "_" for c in name):
            raise Unparsable(f"line {number}: not an assignment")
        result[name] = _sh_word(word, number)
    return result


def _sh_word(word: str, number: int) -> str:
    out, i = [], 0
    while i < len(word):
        c = word[i]
        if c == "'":
            end = word.find("'", i + 1)
            if end < 0:
                raise Unparsable(f"line {number}: unterminated '")
            out.append(word[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= len(word):
                    raise Unparsable(f'line {number}: unterminated "')
                c = word[i]
                if c == '"':
                    i += 1
                    break
                if c in "$`":
                    raise Unparsable(f"line {number}: expansion in double quotes")
                if c == "\\" and i + 1 < len(word) and word[i + 1] in '$`"\\\n':
                    out.append(word[i + 1])
                    i += 2
                    continue
                out.append(c)
                i += 1
        elif c == "\\":
            if i + 1 >= len(word):
                raise Unparsable(f"line {number}: trailing backslash continues the line")
            out.append(word[i + 1])
            i += 2
        elif c in _SH_SPECIAL and c not in "=%{}":
            raise Unparsable(f"line {number}: unquoted {c!r}")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def dotenv_env(text: str) -> dict[str, str | None]:
    return dict(dotenv_values(stream=io.StringIO(text)))


# -- nginx ---------------------------------------------------------------------------------------


def nginx_tokens(text: str) -> list[str]:
    """nginx's configuration tokens; `;`, `{` and `}` as tokens of their own."""
    tokens: list[str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == "#":
            while i < n and text[i] != "\n":
                i += 1
        elif c in ";{}":
            tokens.append(c)
            i += 1
        elif c in "\"'":
            j, word = i + 1, []
            while True:
                if j >= n:
                    raise Unparsable("unterminated quote")
                if text[j] == "\\" and j + 1 < n and text[j + 1] in (c, "\\"):
                    word.append(text[j + 1])
                    j += 2
                    continue
                if text[j] == c:
                    break
                word.append(text[j])
                j += 1
            tokens.append("".join(word))
            i = j + 1
            # nginx also takes `)` there: the end of an `if ("...")` condition.
            if i < n and text[i] not in " \t\r\n;{})":
                raise Unparsable("unexpected character after a quoted string")
        else:
            j, word = i, []
            while j < n and text[j] not in " \t\r\n;{}":
                if text[j] == "\\" and j + 1 < n:
                    word.append(text[j + 1])
                    j += 2
                    continue
                word.append(text[j])
                j += 1
            tokens.append("".join(word))
            i = j
    return tokens


def nginx_structure(text: str) -> list[tuple[int, str, int]]:
    """(depth, directive name, number of arguments) for every directive and block, in order."""
    out: list[tuple[int, str, int]] = []
    depth, words = 0, []
    for token in nginx_tokens(text):
        if token == ";":
            if not words:
                raise Unparsable("empty directive")
            out.append((depth, words[0], len(words) - 1))
            words = []
        elif token == "{":
            if not words:
                raise Unparsable("block without a name")
            out.append((depth, words[0] + " {", len(words) - 1))
            depth, words = depth + 1, []
        elif token == "}":
            if words or depth == 0:
                raise Unparsable("unbalanced }")
            depth -= 1
        else:
            words.append(token)
    if words or depth:
        raise Unparsable("unterminated directive or block")
    return out


def nginx_directives(text: str, name: str) -> list[list[str]]:
    """The arguments of every directive called `name` (for checks of single values)."""
    found, words = [], []
    for token in nginx_tokens(text):
        if token in ";{}":
            if words and words[0] == name:
                found.append(words[1:])
            words = []
        else:
            words.append(token)
    return found


# -- systemd units -------------------------------------------------------------------------------


def unit_structure(text: str) -> list[tuple[str, str, int]]:
    """(section, key, words) per setting; words counted for Exec lines only (else 0). Raises
    Unparsable for a line systemd would join with the next (a trailing backslash) or one that
    is neither a section, a comment nor Key=value."""
    out: list[tuple[str, str, int]] = []
    section = ""
    for number, line in enumerate(text.split("\n"), start=1):
        if line.endswith("\\"):
            raise Unparsable(f"line {number}: continues on the next line")
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            section = stripped[1:-1]
            continue
        key, eq, value = stripped.partition("=")
        if not eq or not key.strip() or not all(c.isalnum() for c in key.strip()):
            raise Unparsable(f"line {number}: not Key=value")
        words = len(value.split()) if key.startswith("Exec") else 0
        out.append((section, key.strip(), words))
    return out


_C_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\", '"': '"', "'": "'", "s": " "}


def exec_words(value: str) -> list[str]:
    """The argv systemd runs for an ExecStart= value (src/basic/extract-word.c with UNQUOTE and
    CUNESCAPE, then specifiers and variables): words split at white space, "..." and '...'
    grouping, backslash escapes; `%%` is `%` and `$$` is `$`. A specifier (`%n`) or a variable
    (`$X`) would expand to something else: Unparsable."""
    words: list[str] = []
    word: list[str] | None = None
    quote = ""
    i = 0
    while i < len(value):
        ch = value[i]
        if ch == "%":
            if value[i + 1 : i + 2] != "%":
                raise Unparsable(f"a specifier at {i}: {value[i : i + 2]!r}")
            ch, i = "%", i + 1
        elif ch == "$":
            if value[i + 1 : i + 2] != "$":
                raise Unparsable(f"a variable at {i}: {value[i : i + 2]!r}")
            ch, i = "$", i + 1
        elif ch == "\\":
            nxt = value[i + 1 : i + 2]
            if nxt not in _C_ESCAPES:
                raise Unparsable(f"an escape at {i}: {value[i : i + 2]!r}")
            word = (word or []) + [_C_ESCAPES[nxt]]
            i += 2
            continue
        elif ch in "\"'" and (not quote or quote == ch):
            quote = "" if quote else ch
            word = word or []
            i += 1
            continue
        elif ch in " \t" and not quote:
            if word is not None:
                words.append("".join(word))
                word = None
            i += 1
            continue
        elif ch in "\n\r\x00":
            raise Unparsable(f"a line break or NUL at {i}")
        word = (word or []) + [ch]
        i += 1
    if quote:
        raise Unparsable("an unbalanced quote")
    if word is not None:
        words.append("".join(word))
    return words


def supervisor_programs(text: str) -> dict[str, dict[str, object]]:
    """Each [program:x] as supervisord reads it: its own config parser (inline comments start
    at a `;` or `#` after white space, quotes or not), every value %-expanded as supervisord
    expands it, and `command` split into words by shlex as supervisord splits it."""
    from supervisor.options import UnhosedConfigParser

    parser = UnhosedConfigParser()
    try:
        parser.read_string(text)
    except configparser.Error as exc:
        raise Unparsable(f"supervisord cannot read it: {exc}") from None
    found: dict[str, dict[str, object]] = {}
    for section in parser.sections():
        name = section.partition(":")[2]
        expansions = {
            "program_name": name,
            "group_name": name,
            "process_num": 0,
            "numprocs": 1,
            "here": "/etc/supervisor/conf.d",
            "host_node_name": "h",
        }
        values: dict[str, object] = {}
        for key in parser.options(section):
            try:
                values[key] = parser.get(section, key, raw=True) % expansions
            except (KeyError, ValueError, TypeError) as exc:
                raise Unparsable(f"{section}.{key}: supervisord cannot expand it: {exc}") from None
        if "command" in values:
            try:
                values["argv"] = shlex.split(str(values["command"]))
            except ValueError as exc:
                raise Unparsable(f"{section}.command: {exc}") from None
        found[section] = values
    return found
