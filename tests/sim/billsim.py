#!/usr/bin/env python3
"""billsim - a BILLmanager emulator for remotetask's tests.

It implements the API subset of /work/shared/BILLMANAGER-API.md (the
project's docs copy it as the contract): functions task, task.edit,
task.delete, department, department.edit, user, account and auth, answered in
BILLmanager's out=json shapes. State lives in SQLite so a test can stop and
restart the emulator without losing tasks. A second, plain-HTTP listener (the
admin API) lets a test inject faults (latency, HTTP errors, hangs, a down
switch, and bad answers: HTTP 200 with a body that is not JSON, JSON of the
wrong shape, a login page, 100 MB, one byte a second, or a reset halfway),
read the call log, and edit tasks directly as an operator would.

Standard library only. See tests/sim/README.md for the command line, the admin
API and the choices made where the contract is silent.
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import hashlib
import hmac
import json
import logging
import os
import random
import re
import secrets
import select
import signal
import socket
import sqlite3
import ssl
import struct
import sys
import termios
import threading
import time
import urllib.parse
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterable, Optional

LOG = logging.getLogger("billsim")

# A request body larger than this is refused with 413 before it is read, so a
# misbehaving client cannot make the emulator buffer without bound.
MAX_BODY = 8 * 1024 * 1024
# parse_qsl refuses more fields than this; it caps the work per request.
MAX_FIELDS = 4096
# Idle keep-alive connections are dropped after this many seconds so that
# their handler threads do not live forever.
IDLE_TIMEOUT_S = 120.0
# An upper bound for POST /tasks/bulk: large enough for any benchmark, small
# enough that a typo cannot fill the disk.
MAX_BULK = 1_000_000

# Bad answers (the "bad_answer" fault): HTTP 200 with a body no API would
# send. See README.md, "Bad answers".
BAD_ANSWERS = ("invalid_json", "wrong_shape", "html_login", "huge", "trickle", "reset")
# The wrong_shape variants, taken in turn unless bad_variant picks one.
WRONG_SHAPES = ("doc_array", "top_array", "elem_string", "error_string", "fields_numbers",
                "fields_arrays")
# The settings a bad answer reads, copied per request under the lock.
BAD_KEYS = ("bad_answer", "bad_variant", "huge_bytes", "huge_chunked", "trickle_interval_s",
            "trickle_s", "reset_after")
# The default and the largest size of a "huge" answer. It is generated as
# it is sent, so neither is ever held in memory.
HUGE_BYTES = 100 * 1024 * 1024
MAX_HUGE = 1 << 36
HUGE_CHUNK = 64 * 1024
# How long a "reset" answer waits for the client to acknowledge the part
# it was sent before the connection is reset.
RESET_DRAIN_S = 2.0
# What a login wall in front of the API (an expired SSO session, a proxy
# that lost its routing) answers instead: BILLmanager's own login form.
LOGIN_PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>BILLmanager - Log in</title>
<link rel="stylesheet" href="/manimg/orion/main.css">
</head>
<body class="b-login">
<form class="b-login__form" method="post" action="/billmgr">
<input type="hidden" name="func" value="auth">
<label>Username <input type="text" name="username" autocomplete="username"></label>
<label>Password <input type="password" name="password" autocomplete="current-password"></label>
<button type="submit">Log in</button>
</form>
<p class="b-login__footer">Session expired or not authorized. Please log in again.</p>
</body>
</html>
"""

API_PATHS = ("/billmgr", "/manager/billmgr")
TASK_FIELDS = ("department", "type", "name", "note", "item", "client",
               "performer", "status", "deadline")
# Fields an operator may also set through the admin API (the server sets
# them itself on the main port).
ADMIN_TASK_FIELDS = TASK_FIELDS + ("opendate", "updated")
ID_FIELDS = ("department", "client", "performer")
# Parameter names whose values never reach the call log or a log line.
SECRET_PARAMS = frozenset({"password", "passwd", "confirm", "auth"})
DEADLINE_RE = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}$")


def now_str() -> str:
    """The server's local time in BILLmanager's YYYY-MM-DD HH:MM:SS."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())


def mask_params(params: dict[str, str]) -> dict[str, str]:
    """A copy of params safe to log: passwords, session ids and the password
    part of authinfo become "***" (authinfo keeps its login so a test can
    tell the callers apart)."""
    out: dict[str, str] = {}
    for key, value in params.items():
        if key == "authinfo":
            login, sep, _ = value.partition(":")
            out[key] = login + ":***" if sep else "***"
        elif key in SECRET_PARAMS:
            out[key] = "***"
        else:
            out[key] = value
    return out


def scrub(text: str) -> str:
    """Removes query strings and secret-looking form pairs from a line that
    the http.server machinery wants to log (it quotes request lines)."""
    text = re.sub(r"\?\S*", "?...", text)
    return re.sub(r"(password|passwd|authinfo|auth)=[^&\s]*", r"\1=***", text)


class ApiError(Exception):
    """An error answered inside the API document (HTTP 200)."""

    def __init__(self, etype: str, obj: str, msg: str) -> None:
        super().__init__(msg)
        self.etype = etype
        self.obj = obj
        self.msg = msg

    def doc(self) -> dict[str, Any]:
        err: dict[str, Any] = {"$type": self.etype}
        if self.obj:
            err["$object"] = self.obj
        err["msg"] = {"$": self.msg}
        return {"error": err}


class SeedError(ValueError):
    """A seed document or flag that cannot be applied."""


# ---------------------------------------------------------------------------
# Storage


SCHEMA = """
CREATE TABLE IF NOT EXISTS users(
    login TEXT PRIMARY KEY,
    salt TEXT NOT NULL,
    pwhash TEXT NOT NULL,
    deny TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS sessions(
    id TEXT PRIMARY KEY,
    login TEXT NOT NULL,
    last_seen REAL NOT NULL);
CREATE TABLE IF NOT EXISTS departments(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    orderpriority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'on');
CREATE TABLE IF NOT EXISTS staff(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    realname TEXT NOT NULL DEFAULT '');
CREATE TABLE IF NOT EXISTS accounts(
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tasks(
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    department INTEGER NOT NULL,
    type TEXT NOT NULL DEFAULT '',
    name TEXT NOT NULL DEFAULT '',
    note TEXT NOT NULL DEFAULT '',
    item TEXT NOT NULL DEFAULT '',
    client INTEGER,
    performer INTEGER,
    status INTEGER NOT NULL DEFAULT 0,
    deadline TEXT NOT NULL DEFAULT '',
    opendate TEXT NOT NULL,
    updated TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS tasks_by_department ON tasks(department, id);
CREATE TABLE IF NOT EXISTS calls(
    n INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    func TEXT NOT NULL,
    params TEXT NOT NULL,
    outcome TEXT NOT NULL,
    write INTEGER NOT NULL);
"""

TASK_COLUMNS = ("id", "department", "type", "name", "note", "item", "client",
                "performer", "status", "deadline", "opendate", "updated")


def hash_password(salt: str, password: str) -> str:
    return hashlib.sha256((salt + "\0" + password).encode("utf-8")).hexdigest()


def as_int(value: Any) -> Optional[int]:
    """value as an int when it is one (int or decimal text), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d{1,18}", value.strip()):
        return int(value.strip())
    return None


class Store:
    """All persistent state. One connection guarded by one lock: the work per
    request is tiny, and a single writer keeps task ids strictly monotonic
    and bulk inserts contiguous."""

    def __init__(self, path: str) -> None:
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False,
                                  isolation_level=None, timeout=10.0)
        self.db.row_factory = sqlite3.Row
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        with self.lock:
            self.db.close()

    def _tx(self) -> "_Transaction":
        return _Transaction(self.db)

    # -- seeding ---------------------------------------------------------

    def seed(self, data: Any) -> dict[str, int]:
        """Applies a seed document (see README); idempotent. Raises SeedError
        on a malformed document, applying nothing."""
        if not isinstance(data, dict):
            raise SeedError("the seed must be a JSON object")
        unknown = set(data) - {"users", "departments", "staff", "accounts"}
        if unknown:
            raise SeedError("unknown seed keys: " + ", ".join(sorted(unknown)))
        users = [self._seed_user(u) for u in _seed_list(data, "users")]
        depts = [_seed_department(d) for d in _seed_list(data, "departments")]
        staff = [_seed_staff(s) for s in _seed_list(data, "staff")]
        accounts = [_seed_account(a) for a in _seed_list(data, "accounts")]
        with self.lock, self._tx():
            self.db.executemany(
                "INSERT OR REPLACE INTO users(login, salt, pwhash, deny) VALUES (?,?,?,?)", users)
            self.db.executemany(
                "INSERT OR REPLACE INTO departments(id, name, orderpriority, status) VALUES (?,?,?,?)",
                depts)
            self.db.executemany(
                "INSERT OR REPLACE INTO staff(id, name, realname) VALUES (?,?,?)", staff)
            self.db.executemany(
                "INSERT OR REPLACE INTO accounts(id, name) VALUES (?,?)", accounts)
        return {"users": len(users), "departments": len(depts),
                "staff": len(staff), "accounts": len(accounts)}

    @staticmethod
    def _seed_user(u: Any) -> tuple[str, str, str, str]:
        if not isinstance(u, dict):
            raise SeedError("a user must be an object")
        login, password = u.get("login"), u.get("password")
        if not isinstance(login, str) or not login or ":" in login:
            raise SeedError("a user needs a non-empty login without ':'")
        if not isinstance(password, str):
            raise SeedError("user %r needs a password string" % login)
        deny = u.get("deny", [])
        if not isinstance(deny, list) or not all(isinstance(f, str) for f in deny):
            raise SeedError("user %r: deny must be a list of function names" % login)
        salt = secrets.token_hex(8)
        return (login, salt, hash_password(salt, password), ",".join(deny))

    # -- authentication --------------------------------------------------

    def check_password(self, login: str, password: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT salt, pwhash FROM users WHERE login=?",
                                  (login,)).fetchone()
        if row is None:
            # Hash anyway so that an unknown login costs what a known one does.
            hash_password("x", password)
            return False
        return hmac.compare_digest(row["pwhash"], hash_password(row["salt"], password))

    def denied(self, login: str, func: str) -> bool:
        with self.lock:
            row = self.db.execute("SELECT deny FROM users WHERE login=?", (login,)).fetchone()
        return row is not None and func in [f for f in row["deny"].split(",") if f]

    def session_new(self, login: str) -> str:
        sid = secrets.token_hex(16)
        with self.lock:
            self.db.execute("INSERT INTO sessions(id, login, last_seen) VALUES (?,?,?)",
                            (sid, login, time.time()))
        return sid

    def session_touch(self, sid: str, ttl: float) -> Optional[str]:
        """The login of a live session, whose expiry is pushed back; None
        when the session is unknown or has expired (it is then removed)."""
        now = time.time()
        with self.lock, self._tx():
            row = self.db.execute("SELECT login, last_seen FROM sessions WHERE id=?",
                                  (sid,)).fetchone()
            if row is None:
                return None
            if now - row["last_seen"] > ttl:
                self.db.execute("DELETE FROM sessions WHERE id=?", (sid,))
                return None
            self.db.execute("UPDATE sessions SET last_seen=? WHERE id=?", (now, sid))
            return str(row["login"])

    def sessions_expire(self) -> int:
        with self.lock:
            return self.db.execute("DELETE FROM sessions").rowcount

    # -- reference objects -----------------------------------------------

    def exists(self, table: str, oid: int) -> bool:
        assert table in ("departments", "staff", "accounts", "tasks")
        with self.lock:
            return self.db.execute(f"SELECT 1 FROM {table} WHERE id=?", (oid,)).fetchone() is not None

    def page(self, sql_from: str, columns: str, where: str, args: list[Any],
             limit: int, offset: int) -> tuple[int, list[dict[str, Any]]]:
        """(total rows, one page of rows) of a list query ordered by id."""
        with self.lock:
            total = self.db.execute(f"SELECT count(*) FROM {sql_from} {where}", args).fetchone()[0]
            rows = self.db.execute(
                f"SELECT {columns} FROM {sql_from} {where} ORDER BY id LIMIT ? OFFSET ?",
                args + [limit, offset]).fetchall()
        return int(total), [dict(r) for r in rows]

    def department_get(self, did: int) -> Optional[dict[str, Any]]:
        with self.lock:
            row = self.db.execute("SELECT * FROM departments WHERE id=?", (did,)).fetchone()
        return dict(row) if row else None

    def department_create(self, name: str, orderpriority: int) -> int:
        with self.lock, self._tx():
            if self.db.execute("SELECT 1 FROM departments WHERE name=?", (name,)).fetchone():
                raise ApiError("exists", "name", "a department with this name exists")
            cur = self.db.execute(
                "INSERT INTO departments(id, name, orderpriority) VALUES "
                "((SELECT coalesce(max(id), 0) + 1 FROM departments), ?, ?)", (name, orderpriority))
            return int(cur.lastrowid or 0)

    def department_change(self, did: int, fields: dict[str, Any]) -> None:
        with self.lock, self._tx():
            if "name" in fields and self.db.execute(
                    "SELECT 1 FROM departments WHERE name=? AND id<>?",
                    (fields["name"], did)).fetchone():
                raise ApiError("exists", "name", "a department with this name exists")
            for key, value in fields.items():
                self.db.execute(f"UPDATE departments SET {key}=? WHERE id=?", (value, did))

    # -- tasks -----------------------------------------------------------

    def task_get(self, tid: int) -> Optional[dict[str, Any]]:
        with self.lock:
            row = self.db.execute("SELECT * FROM tasks WHERE id=?", (tid,)).fetchone()
        return dict(row) if row else None

    def task_list_raw(self, department: Optional[int]) -> list[dict[str, Any]]:
        with self.lock:
            if department is None:
                rows = self.db.execute("SELECT * FROM tasks ORDER BY id").fetchall()
            else:
                rows = self.db.execute("SELECT * FROM tasks WHERE department=? ORDER BY id",
                                       (department,)).fetchall()
        return [dict(r) for r in rows]

    def task_create(self, fields: dict[str, Any]) -> int:
        stamp = now_str()
        row = {"opendate": stamp, "updated": stamp}
        row.update(fields)
        keys = list(row)
        with self.lock:
            cur = self.db.execute(
                "INSERT INTO tasks(%s) VALUES (%s)" % (",".join(keys), ",".join("?" * len(keys))),
                [row[k] for k in keys])
            return int(cur.lastrowid or 0)

    def task_bulk(self, count: int, fields: dict[str, Any], prefix: str) -> tuple[int, int]:
        stamp = now_str()
        base = {"opendate": stamp, "updated": stamp}
        base.update(fields)
        keys = list(base) + ["name"]
        sql = "INSERT INTO tasks(%s) VALUES (%s)" % (",".join(keys), ",".join("?" * len(keys)))
        values = [base[k] for k in keys[:-1]]
        first = last = 0
        with self.lock, self._tx():
            for i in range(1, count + 1):
                cur = self.db.execute(sql, values + [f"{prefix}{i}"])
                last = int(cur.lastrowid or 0)
                if i == 1:
                    first = last
        return first, last

    def task_change(self, tid: int, fields: dict[str, Any], touch: bool = True) -> bool:
        """Sets the given fields (and `updated` unless given or touch is
        False); False when the task does not exist."""
        fields = dict(fields)
        if touch and "updated" not in fields:
            fields["updated"] = now_str()
        with self.lock, self._tx():
            if self.db.execute("SELECT 1 FROM tasks WHERE id=?", (tid,)).fetchone() is None:
                return False
            if fields:
                sets = ",".join(f"{k}=?" for k in fields)
                self.db.execute(f"UPDATE tasks SET {sets} WHERE id=?", list(fields.values()) + [tid])
        return True

    def task_delete(self, ids: list[int]) -> None:
        """Deletes all of ids, or none of them: raises _Missing naming the
        first unknown id."""
        with self.lock, self._tx():
            for tid in ids:
                if self.db.execute("SELECT 1 FROM tasks WHERE id=?", (tid,)).fetchone() is None:
                    raise _Missing(tid)
            for tid in ids:
                self.db.execute("DELETE FROM tasks WHERE id=?", (tid,))

    # -- call log --------------------------------------------------------

    def call_log(self, func: str, params: dict[str, str], outcome: str, write: bool) -> None:
        with self.lock:
            self.db.execute(
                "INSERT INTO calls(ts, func, params, outcome, write) VALUES (?,?,?,?,?)",
                (time.time(), func, json.dumps(params, ensure_ascii=False), outcome, int(write)))

    def calls(self, since: int) -> list[dict[str, Any]]:
        with self.lock:
            rows = self.db.execute("SELECT * FROM calls WHERE n>? ORDER BY n", (since,)).fetchall()
        return [{"n": r["n"], "ts": r["ts"], "func": r["func"], "params": json.loads(r["params"]),
                 "outcome": r["outcome"], "write": bool(r["write"])} for r in rows]

    def calls_count(self, func: Optional[str], write: Optional[bool],
                    outcome: Optional[str]) -> int:
        where, args = [], []  # type: list[str], list[Any]
        if func is not None:
            where.append("func=?")
            args.append(func)
        if write is not None:
            where.append("write=?")
            args.append(int(write))
        if outcome is not None:
            where.append("outcome=?")
            args.append(outcome)
        sql = "SELECT count(*) FROM calls" + (" WHERE " + " AND ".join(where) if where else "")
        with self.lock:
            return int(self.db.execute(sql, args).fetchone()[0])

    def calls_reset(self) -> None:
        # The sequence is kept: n stays monotonic, so ?since=N never skips a
        # call made after a reset.
        with self.lock:
            self.db.execute("DELETE FROM calls")


class _Missing(Exception):
    def __init__(self, tid: int) -> None:
        super().__init__(str(tid))
        self.tid = tid


class _Transaction:
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK when the block raises."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.db.execute("COMMIT" if exc_type is None else "ROLLBACK")


def _seed_list(data: dict[str, Any], key: str) -> list[Any]:
    value = data.get(key, [])
    if not isinstance(value, list):
        raise SeedError(f"{key} must be a list")
    return value


def _seed_id(obj: Any, what: str) -> int:
    if not isinstance(obj, dict):
        raise SeedError(f"a {what} must be an object")
    oid = as_int(obj.get("id"))
    if oid is None or oid <= 0:
        raise SeedError(f"a {what} needs a positive integer id")
    return oid


def _seed_name(obj: dict[str, Any], what: str, key: str = "name", default: Optional[str] = None) -> str:
    value = obj.get(key, default)
    if not isinstance(value, str) or (key == "name" and not value):
        raise SeedError(f"{what} {obj.get('id')}: {key} must be a non-empty string"
                        if key == "name" else f"{what} {obj.get('id')}: {key} must be a string")
    return value


def _seed_department(d: Any) -> tuple[int, str, int, str]:
    did = _seed_id(d, "department")
    prio = as_int(d.get("orderpriority", 0))
    if prio is None:
        raise SeedError(f"department {did}: orderpriority must be an integer")
    return (did, _seed_name(d, "department"), prio,
            _seed_name(d, "department", "status", "on"))


def _seed_staff(s: Any) -> tuple[int, str, str]:
    sid = _seed_id(s, "staff member")
    return (sid, _seed_name(s, "staff member"), _seed_name(s, "staff member", "realname", ""))


def _seed_account(a: Any) -> tuple[int, str]:
    return (_seed_id(a, "account"), _seed_name(a, "account"))


def seed_from_flags(users: Iterable[str], departments: Iterable[str],
                    staff: Iterable[str], accounts: Iterable[str]) -> dict[str, Any]:
    """A seed document from the repeatable command-line flags."""
    def split(value: str, flag: str) -> tuple[str, str]:
        left, sep, right = value.partition(":")
        if not sep or not left:
            raise SeedError(f"{flag} wants A:B, got a value without ':'")
        return left, right

    doc: dict[str, list[dict[str, Any]]] = {"users": [], "departments": [], "staff": [], "accounts": []}
    for u in users:
        login, password = split(u, "--user")
        doc["users"].append({"login": login, "password": password})
    for d in departments:
        did, name = split(d, "--department")
        doc["departments"].append({"id": did, "name": name})
    for s in staff:
        sid, name = split(s, "--staff")
        doc["staff"].append({"id": sid, "name": name})
    for a in accounts:
        aid, name = split(a, "--account")
        doc["accounts"].append({"id": aid, "name": name})
    return doc


# ---------------------------------------------------------------------------
# The API


def text(value: Any) -> dict[str, str]:
    return {"$": str(value)}


def element(row: dict[str, Any], columns: Iterable[str]) -> dict[str, Any]:
    """One list element: fields with no value are absent."""
    return {c: text(row[c]) for c in columns if row.get(c) is not None and str(row[c]) != ""}


class Api:
    """Answers one authenticated API call with the document under `doc`."""

    def __init__(self, store: Store, page_size: int) -> None:
        self.store = store
        self.page_size = page_size
        self.funcs: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
            "task": self.task,
            "task.edit": self.task_edit,
            "task.delete": self.task_delete,
            "department": self.department,
            "department.edit": self.department_edit,
            "user": self.user,
            "account": self.account,
        }

    def call(self, func: str, params: dict[str, str]) -> dict[str, Any]:
        handler = self.funcs.get(func)
        if handler is None:
            raise ApiError("missed", "func", f"unknown function '{func}'")
        return handler(params)

    # -- lists -----------------------------------------------------------

    def _paging(self, params: dict[str, str]) -> tuple[int, int]:
        cnt = as_int(params.get("p_cnt", "")) if params.get("p_cnt", "") != "" else self.page_size
        num = as_int(params.get("p_num", "")) if params.get("p_num", "") != "" else 1
        if cnt is None or cnt < 1:
            raise ApiError("value", "p_cnt", "p_cnt must be a positive integer")
        if num is None or num < 1:
            raise ApiError("value", "p_num", "p_num must be a positive integer")
        return cnt, num

    def _list(self, params: dict[str, str], sql_from: str, select: str, columns: Iterable[str],
              where: str = "", args: Optional[list[Any]] = None) -> dict[str, Any]:
        cnt, num = self._paging(params)
        total, rows = self.store.page(sql_from, select, where, args or [], cnt, (num - 1) * cnt)
        doc: dict[str, Any] = {}
        cols = list(columns)
        elems = [element(r, cols) for r in rows]
        if elems:
            doc["elem"] = elems
        doc["p_elems"] = text(total)
        doc["p_num"] = text(num)
        doc["p_cnt"] = text(cnt)
        return doc

    def task(self, params: dict[str, str]) -> dict[str, Any]:
        where, args = [], []  # type: list[str], list[Any]
        if params.get("filter") == "on":
            for key in ("id", "department", "client", "performer", "status"):
                value = params.get(key, "")
                if value == "":
                    continue
                number = as_int(value)
                if number is None:
                    raise ApiError("value", key, f"{key} filter must be an id")
                where.append(f"t.{key}=?")
                args.append(number)
            for key in ("type", "item"):
                if params.get(key, "") != "":
                    where.append(f"t.{key}=?")
                    args.append(params[key])
            if params.get("name", "") != "":
                where.append("instr(t.name, ?) > 0")
                args.append(params["name"])
        sql_from = ("(SELECT t.id AS id, t.type AS type, d.name AS department, t.item AS item, "
                    "c.name AS client, s.name AS performer, t.opendate AS opendate, "
                    "t.status AS status, t.name AS name, t.deadline AS deadline, "
                    "t.updated AS updated FROM tasks t "
                    "LEFT JOIN departments d ON d.id=t.department "
                    "LEFT JOIN accounts c ON c.id=t.client "
                    "LEFT JOIN staff s ON s.id=t.performer"
                    + (" WHERE " + " AND ".join(where) if where else "") + ")")
        columns = ("id", "type", "department", "item", "itemstatus", "itemtype", "pricelist",
                   "client", "performer", "runningoperation", "opendate", "status", "name",
                   "deadline", "updated")
        return self._list(params, sql_from, "*", columns, "", args)

    def department(self, params: dict[str, str]) -> dict[str, Any]:
        return self._list(params, "departments",
                          "id, name AS locale_name, orderpriority, status",
                          ("id", "locale_name", "orderpriority", "status"))

    def user(self, params: dict[str, str]) -> dict[str, Any]:
        return self._list(params, "staff", "id, name, realname", ("id", "name", "realname"))

    def account(self, params: dict[str, str]) -> dict[str, Any]:
        return self._list(params, "accounts", "id, name", ("id", "name"))

    # -- task.edit / task.delete -----------------------------------------

    def _elid(self, params: dict[str, str], table: str) -> int:
        elid = as_int(params.get("elid", ""))
        if elid is None or not self.store.exists(table, elid):
            raise ApiError("missed", "elid", f"object '{params.get('elid', '')}' not found")
        return elid

    def _task_fields(self, params: dict[str, str], creating: bool) -> dict[str, Any]:
        """The task fields present in params, validated and converted to
        what is stored; raises ApiError(value) naming the first bad one."""
        fields: dict[str, Any] = {}
        if creating and params.get("department", "") == "":
            raise ApiError("value", "department", "department is required")
        table_of = {"department": "departments", "client": "accounts", "performer": "staff"}
        for key in ID_FIELDS:
            if key not in params:
                continue
            value = params[key]
            if value == "" and key != "department":
                fields[key] = None
                continue
            oid = as_int(value)
            if oid is None or not self.store.exists(table_of[key], oid):
                raise ApiError("value", key, f"no {key} with id '{value}'")
            fields[key] = oid
        if "name" in params or creating:
            name = params.get("name", "")
            if name.strip() == "":
                raise ApiError("value", "name", "name must not be empty")
            fields["name"] = name
        if "status" in params:
            if params["status"] not in ("0", "1", "2"):
                raise ApiError("value", "status", "status must be 0, 1 or 2")
            fields["status"] = int(params["status"])
        if "deadline" in params:
            deadline = params["deadline"]
            if deadline != "" and not valid_datetime(deadline):
                raise ApiError("value", "deadline", "deadline must be YYYY-MM-DD HH:MM:SS")
            fields["deadline"] = deadline
        for key in ("type", "note", "item"):
            if key in params:
                fields[key] = params[key]
        return fields

    def task_edit(self, params: dict[str, str]) -> dict[str, Any]:
        has_elid = params.get("elid", "") != ""
        if params.get("sok") == "ok":
            if has_elid:
                tid = self._elid(params, "tasks")
                fields = self._task_fields(params, creating=False)
                if not self.store.task_change(tid, fields):
                    raise ApiError("missed", "elid", f"object '{tid}' not found")
            else:
                tid = self.store.task_create(self._task_fields(params, creating=True))
            return {"ok": {}, "id": text(tid)}
        if not has_elid:
            # The form of a new task: only the defaults.
            return {"status": text(0)}
        tid = self._elid(params, "tasks")
        row = self.store.task_get(tid)
        if row is None:
            raise ApiError("missed", "elid", f"object '{tid}' not found")
        doc = element(row, TASK_COLUMNS)
        doc["elid"] = text(tid)
        return doc

    def task_delete(self, params: dict[str, str]) -> dict[str, Any]:
        parts = [p.strip() for p in params.get("elid", "").split(",")]
        ids = [as_int(p) for p in parts]
        if not parts or any(i is None for i in ids):
            raise ApiError("missed", "elid", f"object '{params.get('elid', '')}' not found")
        try:
            self.store.task_delete([i for i in ids if i is not None])
        except _Missing as e:
            raise ApiError("missed", "elid", f"object '{e.tid}' not found") from None
        return {"ok": {}}

    # -- department.edit -------------------------------------------------

    def department_edit(self, params: dict[str, str]) -> dict[str, Any]:
        has_elid = params.get("elid", "") != ""
        if params.get("sok") == "ok":
            fields: dict[str, Any] = {}
            if "name" in params or not has_elid:
                if params.get("name", "").strip() == "":
                    raise ApiError("value", "name", "name must not be empty")
                fields["name"] = params["name"]
            if params.get("orderpriority", "") != "":
                prio = as_int(params["orderpriority"])
                if prio is None:
                    raise ApiError("value", "orderpriority", "orderpriority must be an integer")
                fields["orderpriority"] = prio
            if has_elid:
                did = self._elid(params, "departments")
                self.store.department_change(did, fields)
            else:
                did = self.store.department_create(fields["name"], fields.get("orderpriority", 0))
            return {"ok": {}, "id": text(did)}
        if not has_elid:
            return {}
        did = self._elid(params, "departments")
        row = self.store.department_get(did)
        if row is None:
            raise ApiError("missed", "elid", f"object '{did}' not found")
        doc = element(row, ("id", "name", "orderpriority", "status"))
        doc["elid"] = text(did)
        return doc


def valid_datetime(value: str) -> bool:
    if not DEADLINE_RE.match(value):
        return False
    try:
        datetime.datetime.strptime(value, "%Y-%m-%d %H:%M:%S")
    except ValueError:
        return False
    return True


def to_xml(doc: dict[str, Any]) -> bytes:
    """The same document as BILLmanager's XML: "$x" keys become attributes,
    "$" the text, lists repeat the element."""
    def esc(s: str, quote: bool = False) -> str:
        s = s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        return s.replace('"', "&quot;") if quote else s

    out: list[str] = []

    def emit(name: str, value: Any) -> None:
        if isinstance(value, list):
            for v in value:
                emit(name, v)
            return
        attrs = "".join(f' {k[1:]}="{esc(str(v), True)}"' for k, v in value.items()
                        if k.startswith("$") and k != "$")
        out.append(f"<{name}{attrs}>")
        if "$" in value:
            out.append(esc(str(value["$"])))
        for k, v in value.items():
            if not k.startswith("$"):
                emit(k, v)
        out.append(f"</{name}>")

    emit("doc", doc)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n' + "".join(out) + "\n").encode("utf-8")


def render(doc: dict[str, Any], params: dict[str, str]) -> tuple[bytes, str]:
    """The body and Content-Type of an answer: JSON for out=json, else XML."""
    if params.get("out") == "json":
        return (json.dumps({"doc": doc}, ensure_ascii=False).encode("utf-8"),
                "application/json; charset=utf-8")
    return to_xml(doc), "text/xml; charset=utf-8"


def wrong_shape(variant: str, doc: dict[str, Any]) -> bytes:
    """Valid JSON of a shape no API answer has (see WRONG_SHAPES)."""
    answer: Any
    if variant == "doc_array":
        answer = {"doc": []}
    elif variant == "top_array":
        answer = [1, 2]
    elif variant == "elem_string":
        answer = {"doc": {"elem": "x"}}
    elif variant == "error_string":
        answer = {"doc": {"error": "x"}}
    elif variant == "fields_numbers":
        answer = {"doc": _retype(doc, numbers=True)}
    else:
        answer = {"doc": _retype(doc, numbers=False)}
    return json.dumps(answer, ensure_ascii=False).encode("utf-8")


def _retype(doc: dict[str, Any], numbers: bool) -> dict[str, Any]:
    """doc with every text field ({"$": text}, also in list rows) turned
    into a number (the text's value, or its length when it is not one) or
    into a one-element array of itself."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if key == "elem" and isinstance(value, list):
            out[key] = [_retype(r, numbers) if isinstance(r, dict) else r for r in value]
        elif isinstance(value, dict) and set(value) == {"$"}:
            txt = str(value["$"])
            if numbers:
                out[key] = int(txt) if re.fullmatch(r"-?\d{1,18}", txt) else len(txt)
            else:
                out[key] = [{"$": txt}]
        else:
            out[key] = value
    return out


def huge_body(total: int) -> Iterable[bytes]:
    """total bytes of a JSON-looking answer, in chunks of HUGE_CHUNK: a
    list's start, a name padded with "x" and, if there is room, the end."""
    head = b'{"doc": {"elem": [{"id": {"$": "1"}, "name": {"$": "'
    tail = b'"}}]}}'
    if total < len(head) + len(tail):
        yield head[:total]
        return
    yield head
    pad = b"x" * HUGE_CHUNK
    left = total - len(head) - len(tail)
    while left > 0:
        n = min(left, HUGE_CHUNK)
        yield pad if n == HUGE_CHUNK else pad[:n]
        left -= n
    yield tail


def unacked_bytes(sock: socket.socket) -> int:
    """Bytes sent on sock that the peer has not acknowledged yet (Linux's
    SIOCOUTQ); 0 when the kernel cannot tell."""
    try:
        raw = fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, struct.pack("i", 0))
        return int(struct.unpack("i", raw)[0])
    except (OSError, ValueError):
        return 0


# ---------------------------------------------------------------------------
# Faults


class Faults:
    """What the main port does wrong, set through the admin API. Kept in
    memory: a restart starts healthy."""

    DEFAULTS: dict[str, Any] = {"latency_ms": [0, 0], "error_rate": 0.0, "error_status": 503,
                                "hang_rate": 0.0, "hang_s": 3600.0, "error_next": 0,
                                "hang_next": 0, "funcs": [],
                                # Bad answers: HTTP 200 with a body no API would send.
                                "bad_answer": "", "bad_rate": 1.0, "bad_next": 0,
                                "bad_funcs": [], "bad_variant": "",
                                "huge_bytes": HUGE_BYTES, "huge_chunked": False,
                                "trickle_interval_s": 1.0, "trickle_s": 3600.0,
                                "reset_after": -1}

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.cfg: dict[str, Any] = json.loads(json.dumps(self.DEFAULTS))
        self.rng = random.Random()
        # Which wrong_shape variant the next bad answer uses when none is
        # chosen: they take turns, so a test sees every one.
        self.variant_turn = 0

    def get(self) -> dict[str, Any]:
        with self.lock:
            return json.loads(json.dumps(self.cfg))

    def reset(self) -> None:
        with self.lock:
            self.cfg = json.loads(json.dumps(self.DEFAULTS))

    def update(self, data: Any) -> dict[str, Any]:
        """Merges the given settings into the current ones; raises
        ValueError (nothing changed) on an unknown key or a bad value."""
        if not isinstance(data, dict):
            raise ValueError("faults must be a JSON object")
        unknown = set(data) - set(self.DEFAULTS)
        if unknown:
            raise ValueError("unknown fault settings: " + ", ".join(sorted(unknown)))
        new: dict[str, Any] = {}
        for key, value in data.items():
            new[key] = _check_fault(key, value)
        with self.lock:
            if new.get("bad_answer", self.cfg["bad_answer"]) == "":
                # Switching bad answers off also ends a pending bad_next.
                new.setdefault("bad_next", 0)
            self.cfg.update(new)
            if "bad_answer" in new or "bad_variant" in new:
                self.variant_turn = 0
            return json.loads(json.dumps(self.cfg))

    def bad_off(self) -> dict[str, Any]:
        """Switches bad answers off (the other faults stay) and answers the
        settings."""
        with self.lock:
            self.cfg["bad_answer"] = ""
            self.cfg["bad_next"] = 0
            return json.loads(json.dumps(self.cfg))

    def decide(self, func: str) -> "Decision":
        """What to do with one main-port request calling func: the latency,
        then answer, error, hang or a bad answer (see Decision)."""
        with self.lock:
            cfg = self.cfg
            if cfg["funcs"] and func not in cfg["funcs"]:
                return Decision()
            lo, hi = cfg["latency_ms"]
            latency = self.rng.uniform(lo, hi) / 1000.0 if hi > 0 else 0.0
            if cfg["hang_next"] > 0:
                cfg["hang_next"] -= 1
                return Decision(latency, "hang", hang_s=cfg["hang_s"])
            if cfg["error_next"] > 0:
                cfg["error_next"] -= 1
                return Decision(latency, "error", status=cfg["error_status"])
            draw = self.rng.random()
            if draw < cfg["hang_rate"]:
                return Decision(latency, "hang", hang_s=cfg["hang_s"])
            if draw < cfg["hang_rate"] + cfg["error_rate"]:
                return Decision(latency, "error", status=cfg["error_status"])
            if cfg["bad_answer"] and (not cfg["bad_funcs"] or func in cfg["bad_funcs"]):
                bad = False
                if cfg["bad_next"] > 0:
                    cfg["bad_next"] -= 1
                    bad = True
                elif cfg["bad_rate"] > 0 and self.rng.random() < cfg["bad_rate"]:
                    bad = True
                if bad:
                    bad_cfg = {k: cfg[k] for k in BAD_KEYS}
                    if cfg["bad_answer"] == "wrong_shape" and not cfg["bad_variant"]:
                        bad_cfg["bad_variant"] = WRONG_SHAPES[self.variant_turn % len(WRONG_SHAPES)]
                        self.variant_turn += 1
                    return Decision(latency, "bad", bad=bad_cfg)
            return Decision(latency)


class Decision:
    """The fate of one main-port request: a latency in seconds, then an
    action ("answer", "error" with an HTTP status, "hang" for hang_s
    seconds, or "bad": a bad answer as the settings in bad say)."""

    def __init__(self, latency: float = 0.0, action: str = "answer", status: int = 200,
                 hang_s: float = 0.0, bad: Optional[dict[str, Any]] = None) -> None:
        self.latency = latency
        self.action = action
        self.status = status
        self.hang_s = hang_s
        self.bad = bad or {}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_fault(key: str, value: Any) -> Any:
    if key == "latency_ms":
        if _number(value) and value >= 0:
            return [float(value), float(value)]
        if (isinstance(value, list) and len(value) == 2 and all(_number(v) for v in value)
                and 0 <= value[0] <= value[1]):
            return [float(value[0]), float(value[1])]
        raise ValueError("latency_ms must be a number >= 0 or [min, max]")
    if key in ("error_rate", "hang_rate"):
        if _number(value) and 0.0 <= value <= 1.0:
            return float(value)
        raise ValueError(f"{key} must be a number in 0..1")
    if key == "error_status":
        if isinstance(value, int) and not isinstance(value, bool) and 200 <= value <= 599:
            return value
        raise ValueError("error_status must be an HTTP status in 200..599")
    if key == "hang_s":
        if _number(value) and value > 0:
            return float(value)
        raise ValueError("hang_s must be a number > 0")
    if key in ("error_next", "hang_next"):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ValueError(f"{key} must be an integer >= 0")
    if key in ("funcs", "bad_funcs"):
        if isinstance(value, list) and all(isinstance(f, str) for f in value):
            return list(value)
        raise ValueError(f"{key} must be a list of function names")
    if key == "bad_answer":
        if value is None or value in ("", "off"):
            return ""
        if value in BAD_ANSWERS:
            return value
        raise ValueError("bad_answer must be one of " + ", ".join(BAD_ANSWERS) + " or \"off\"")
    if key == "bad_rate":
        if _number(value) and 0.0 <= value <= 1.0:
            return float(value)
        raise ValueError("bad_rate must be a number in 0..1")
    if key == "bad_next":
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return value
        raise ValueError("bad_next must be an integer >= 0")
    if key == "bad_variant":
        if value is None or value == "" or value in WRONG_SHAPES:
            return value or ""
        raise ValueError("bad_variant must be one of " + ", ".join(WRONG_SHAPES) + " or \"\"")
    if key == "huge_bytes":
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_HUGE:
            return value
        raise ValueError(f"huge_bytes must be an integer in 1..{MAX_HUGE}")
    if key == "huge_chunked":
        if isinstance(value, bool):
            return value
        raise ValueError("huge_chunked must be true or false")
    if key in ("trickle_interval_s", "trickle_s"):
        if _number(value) and 0 < value <= 86400:
            return float(value)
        raise ValueError(f"{key} must be a number in (0, 86400]")
    if key == "reset_after":
        if isinstance(value, int) and not isinstance(value, bool) and value >= -1:
            return value
        raise ValueError("reset_after must be an integer >= 0, or -1 for half the body")
    raise ValueError(f"unknown fault setting {key}")


# ---------------------------------------------------------------------------
# HTTP plumbing


class Sim:
    """Everything a request handler needs."""

    def __init__(self, store: Store, api: Api, faults: Faults, session_ttl: float) -> None:
        self.store = store
        self.api = api
        self.faults = faults
        self.session_ttl = session_ttl
        self.main: Optional[MainListener] = None


class BodyError(Exception):
    def __init__(self, status: HTTPStatus, msg: str) -> None:
        super().__init__(msg)
        self.status = status


class Server(ThreadingHTTPServer):
    """A threaded HTTP server that can wrap connections in TLS inside their
    own thread (a slow handshake never stalls accept) and can cut every open
    connection at once (the down switch)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(self, addr: tuple[str, int], handler: type, sim: Sim,
                 tls: Optional[ssl.SSLContext]) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.sim = sim
        self.tls = tls
        self.closing = threading.Event()
        self._conns: set[socket.socket] = set()
        self._conns_lock = threading.Lock()
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        conn = request
        try:
            if self.tls is not None:
                request.settimeout(IDLE_TIMEOUT_S)
                try:
                    conn = self.tls.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as e:
                    LOG.info("TLS handshake with %s failed: %s", client_address[0], e)
                    return
            with self._conns_lock:
                self._conns.add(conn)
            if self.closing.is_set():
                return
            self.RequestHandlerClass(conn, client_address, self)
        finally:
            with self._conns_lock:
                self._conns.discard(conn)
            if conn is not request:
                try:
                    conn.close()
                except OSError:
                    pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        LOG.warning("connection from %s failed: %s", client_address[0], sys.exc_info()[1])

    def cut_connections(self) -> None:
        self.closing.set()
        with self._conns_lock:
            conns = list(self._conns)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class MainListener:
    """The API listener, which the admin API can take down and bring back
    on the same port."""

    def __init__(self, sim: Sim, host: str, port: int, tls: Optional[ssl.SSLContext]) -> None:
        self.sim = sim
        self.host = host
        self.port = port
        self.tls = tls
        self.lock = threading.Lock()
        self.server: Optional[Server] = None

    def up(self) -> bool:
        """Opens the listener; False when it was already up."""
        with self.lock:
            if self.server is not None:
                return False
            deadline = time.monotonic() + 5.0
            while True:
                try:
                    srv = Server((self.host, self.port), MainHandler, self.sim, self.tls)
                    break
                except OSError as e:
                    # A port just released may still be bound by a
                    # connection the kernel is tearing down.
                    if time.monotonic() > deadline:
                        raise OSError(f"cannot listen on port {self.port}: {e}") from None
                    time.sleep(0.05)
            self.port = srv.server_address[1]
            self.server = srv
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.1},
                             name="main-listener", daemon=True).start()
            return True

    def down(self) -> bool:
        """Closes the listener and every open connection; False when it
        was already down."""
        with self.lock:
            srv = self.server
            if srv is None:
                return False
            self.server = None
            srv.closing.set()
            srv.shutdown()
            srv.server_close()
            srv.cut_connections()
            return True

    def is_up(self) -> bool:
        with self.lock:
            return self.server is not None


class Handler(BaseHTTPRequestHandler):
    """What the two listeners share: HTTP/1.1 keep-alive, capped bodies,
    plain answers with a Content-Length, logs without secrets."""

    protocol_version = "HTTP/1.1"
    server_version = "billsim/1"
    timeout = IDLE_TIMEOUT_S
    # Without TCP_NODELAY a small answer written after its headers waits for
    # the client's delayed ACK (40 ms on Linux): with 16 calls in flight
    # that capped the emulator at about 350 calls/s whatever its CPU.
    disable_nagle_algorithm = True
    server: Server

    def log_request(self, code: Any = "-", size: Any = "-") -> None:
        # Each handler logs its own line, without the query string.
        pass

    def log_message(self, format: str, *args: Any) -> None:
        LOG.info("%s: %s", self.client_address[0], scrub(format % args))

    def handle_expect_100(self) -> bool:
        length = self.headers.get("Content-Length")
        if length is not None and length.isdigit() and int(length) > MAX_BODY:
            self.close_connection = True
            self.send_plain(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large\n")
            return False
        return super().handle_expect_100()

    def read_body(self) -> bytes:
        """The request body, at most MAX_BODY bytes; raises BodyError."""
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b""
        if not length.strip().isdigit():
            raise BodyError(HTTPStatus.BAD_REQUEST, "bad Content-Length")
        size = int(length)
        if size > MAX_BODY:
            raise BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
        body = self.rfile.read(size)
        if len(body) != size:
            raise BodyError(HTTPStatus.BAD_REQUEST, "short request body")
        return body

    def _read_chunked(self) -> bytes:
        chunks: list[bytes] = []
        total = 0
        while True:
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";")[0].strip(), 16)
            except ValueError:
                raise BodyError(HTTPStatus.BAD_REQUEST, "bad chunk size") from None
            if size == 0:
                break
            total += size
            if total > MAX_BODY:
                raise BodyError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "request body too large")
            chunk = self.rfile.read(size)
            if len(chunk) != size:
                raise BodyError(HTTPStatus.BAD_REQUEST, "short chunk")
            chunks.append(chunk)
            self.rfile.readline(1024)
        # Trailers end with an empty line.
        while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
            pass
        return b"".join(chunks)

    def send_bytes(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_plain(self, status: int, msg: str) -> None:
        self.send_bytes(status, msg.encode("utf-8"), "text/plain; charset=utf-8")

    def url_path(self) -> str:
        return urllib.parse.urlsplit(self.path).path


def parse_form(raw: str) -> dict[str, str]:
    """A form-encoded string as a dict (the last of repeated keys wins);
    raises BodyError on bad UTF-8 or too many fields."""
    try:
        return dict(urllib.parse.parse_qsl(raw, keep_blank_values=True, encoding="utf-8",
                                           errors="strict", max_num_fields=MAX_FIELDS))
    except (UnicodeDecodeError, ValueError) as e:
        raise BodyError(HTTPStatus.BAD_REQUEST, f"bad form data: {type(e).__name__}") from None


class MainHandler(Handler):
    """The BILLmanager API."""

    def do_GET(self) -> None:
        self.serve_api()

    def do_POST(self) -> None:
        self.serve_api()

    def serve_api(self) -> None:
        sim = self.server.sim
        started = time.monotonic()
        func, params, write = "", {}, False  # type: str, dict[str, str], bool
        try:
            path = self.url_path()
            if path not in API_PATHS:
                self._plain_outcome(HTTPStatus.NOT_FOUND, "not found\n", func, params, write)
                return
            try:
                params = parse_form(urllib.parse.urlsplit(self.path).query)
                body = self.read_body() if self.command == "POST" else b""
                ctype = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
                if body and ctype not in ("", "application/x-www-form-urlencoded"):
                    raise BodyError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                                    "only application/x-www-form-urlencoded bodies are read")
                try:
                    form = body.decode("ascii")
                except UnicodeDecodeError:
                    raise BodyError(HTTPStatus.BAD_REQUEST, "a form body must be URL-encoded") from None
                params.update(parse_form(form))
            except BodyError as e:
                # The body was not read to its end: the connection cannot
                # carry another request.
                self.close_connection = True
                func = params.get("func", "")
                self._plain_outcome(e.status, str(e) + "\n", func, params, False)
                return
            func = params.get("func", "")
            write = params.get("sok") == "ok"
            decision = sim.faults.decide(func)
            if decision.latency > 0 and self.server.closing.wait(decision.latency):
                self.close_connection = True
                return
            if decision.action == "hang":
                sim.store.call_log(func, mask_params(params), "hang", write)
                LOG.info("hang %s func=%s for up to %.1fs", path, func, decision.hang_s)
                self._hang(decision.hang_s)
                return
            if decision.action == "error":
                status = decision.status
                self._plain_outcome(status, f"{status} {_reason(status)}\n", func, params, write)
                return
            if decision.action == "bad":
                self._bad_answer(decision.bad, func, params, write)
                return
            doc, outcome = self._answer(func, params)
            sim.store.call_log(func, mask_params(params), outcome, write)
            body, ctype = render(doc, params)
            self.send_bytes(200, body, ctype)
            LOG.info("%s %s func=%s -> %s (%.0f ms)", self.command, path, func, outcome,
                     (time.monotonic() - started) * 1000)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
        except Exception:
            LOG.exception("internal error serving func=%s", func)
            self.close_connection = True
            try:
                sim.store.call_log(func, mask_params(params), "http500", write)
                self.send_plain(500, "internal error\n")
            except Exception:
                pass

    def _plain_outcome(self, status: int, msg: str, func: str, params: dict[str, str],
                       write: bool) -> None:
        self.server.sim.store.call_log(func, mask_params(params), f"http{int(status)}", write)
        LOG.info("%s %s func=%s -> http%d", self.command, self.url_path(), func, int(status))
        self.send_plain(status, msg)

    def _bad_answer(self, bad: dict[str, Any], func: str, params: dict[str, str],
                    write: bool) -> None:
        """Answers HTTP 200 with a body no API would send (the bad_answer
        fault). Behind a login wall the call never reaches the API; in
        every other mode the API runs it and what it answered is spoiled
        on the way back, so a write may have happened."""
        sim = self.server.sim
        mode = bad["bad_answer"]
        what = mode + (":" + bad["bad_variant"] if mode == "wrong_shape" else "")
        if mode == "html_login":
            sim.store.call_log(func, mask_params(params), mode, write)
            LOG.info("%s %s func=%s -> bad answer %s", self.command, self.url_path(), func, what)
            self.send_bytes(200, LOGIN_PAGE.encode("utf-8"), "text/html; charset=utf-8")
            return
        doc, _ = self._answer(func, params)
        sim.store.call_log(func, mask_params(params), mode, write)
        LOG.info("%s %s func=%s -> bad answer %s", self.command, self.url_path(), func, what)
        body, ctype = render(doc, params)
        if mode == "invalid_json":
            # Half of a JSON object is never JSON: its closing brace is gone.
            self.send_bytes(200, body[:max(1, len(body) // 2)], ctype)
        elif mode == "wrong_shape":
            self.send_bytes(200, wrong_shape(bad["bad_variant"], doc),
                            "application/json; charset=utf-8")
        elif mode == "huge":
            self._send_huge(bad["huge_bytes"], bad["huge_chunked"])
        elif mode == "trickle":
            self._send_trickle(body, ctype, bad["trickle_interval_s"], bad["trickle_s"])
        elif mode == "reset":
            self._send_reset(body, ctype, bad["reset_after"])

    def _send_huge(self, total: int, chunked: bool) -> None:
        """A JSON-looking answer of total bytes, generated while it is sent
        (never held in memory), with a Content-Length or chunked."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Content-Length", str(total))
        self.send_header("Connection", "close")
        self.end_headers()
        for chunk in huge_body(total):
            if self.server.closing.is_set():
                return
            if chunked:
                self.wfile.write(b"%x\r\n" % len(chunk))
                self.wfile.write(chunk)
                self.wfile.write(b"\r\n")
            else:
                self.wfile.write(chunk)
        if chunked:
            self.wfile.write(b"0\r\n\r\n")

    def _send_trickle(self, body: bytes, ctype: str, interval_s: float, limit_s: float) -> None:
        """The whole answer's Content-Length, then its body one byte every
        interval_s, until it is sent, the client goes away (a write fails),
        limit_s passes or the listener goes down."""
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        deadline = time.monotonic() + limit_s
        for i in range(len(body)):
            self.wfile.write(body[i:i + 1])
            if i + 1 == len(body) or time.monotonic() >= deadline:
                return
            if self.server.closing.wait(interval_s):
                return

    def _send_reset(self, body: bytes, ctype: str, after: int) -> None:
        """The whole answer's Content-Length, part of its body, then a TCP
        reset (SO_LINGER 0) instead of the rest."""
        sent = len(body) // 2 if after < 0 else after
        sent = max(0, min(sent, len(body) - 1))
        self.close_connection = True
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body[:sent])
        sock = self.connection
        # A reset discards what the kernel has not delivered yet: wait until
        # the client acknowledged the part, so that it really gets it.
        deadline = time.monotonic() + RESET_DRAIN_S
        while unacked_bytes(sock) > 0 and time.monotonic() < deadline:
            if self.server.closing.wait(0.005):
                break
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()

    def _answer(self, func: str, params: dict[str, str]) -> tuple[dict[str, Any], str]:
        """The document and the outcome for the call log."""
        sim = self.server.sim
        try:
            if func == "auth":
                login, password = params.get("username", ""), params.get("password", "")
                if not login or not sim.store.check_password(login, password):
                    raise ApiError("auth", "badpassword", "wrong login or password")
                sid = sim.store.session_new(login)
                return {"auth": {"$id": sid, "$": sid}}, "ok"
            login = self._authenticate(params)
            if sim.store.denied(login, func):
                raise ApiError("access", func, f"user may not call '{func}'")
            return sim.api.call(func, params), "ok"
        except ApiError as e:
            return e.doc(), e.etype

    def _authenticate(self, params: dict[str, str]) -> str:
        sim = self.server.sim
        if "authinfo" in params:
            # The password may hold ':' itself: only the first one splits.
            login, sep, password = params["authinfo"].partition(":")
            if not sep or not sim.store.check_password(login, password):
                raise ApiError("auth", "badpassword", "wrong login or password")
            return login
        if params.get("auth", "") != "":
            login_or_none = sim.store.session_touch(params["auth"], sim.session_ttl)
            if login_or_none is None:
                raise ApiError("auth", "session", "the session is unknown or has expired")
            return login_or_none
        raise ApiError("auth", "", "authorization required")

    def _hang(self, hang_s: float) -> None:
        """Holds the connection without answering until hang_s passes, the
        client goes away, or the listener goes down; then closes it."""
        self.close_connection = True
        deadline = time.monotonic() + hang_s
        sock = self.connection
        while not self.server.closing.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                readable, _, _ = select.select([sock], [], [], min(left, 0.25))
                if readable and not isinstance(sock, ssl.SSLSocket):
                    if sock.recv(1, socket.MSG_PEEK) == b"":
                        return
                    # The client sent more (a pipelined request): keep
                    # holding, without spinning on a readable socket.
                    self.server.closing.wait(min(left, 0.25))
                elif readable:
                    self.server.closing.wait(min(left, 0.25))
            except (OSError, ValueError):
                return


def _reason(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


# ---------------------------------------------------------------------------
# Admin API


class AdminError(Exception):
    def __init__(self, status: int, msg: str) -> None:
        super().__init__(msg)
        self.status = status


def _admin_task_fields(data: Any, creating: bool) -> dict[str, Any]:
    """Task fields from an admin JSON object, typed as stored; raises
    AdminError(400)."""
    if not isinstance(data, dict):
        raise AdminError(400, "a task must be a JSON object")
    unknown = set(data) - set(ADMIN_TASK_FIELDS)
    if unknown:
        raise AdminError(400, "unknown task fields: " + ", ".join(sorted(unknown)))
    fields: dict[str, Any] = {}
    for key, value in data.items():
        if key in ID_FIELDS:
            if value is None or value == "":
                if key == "department":
                    raise AdminError(400, "department must be an id")
                fields[key] = None
                continue
            oid = as_int(value)
            if oid is None:
                raise AdminError(400, f"{key} must be an integer id or null")
            fields[key] = oid
        elif key == "status":
            status = as_int(value)
            if status is None:
                raise AdminError(400, "status must be an integer")
            fields[key] = status
        else:
            if not isinstance(value, str):
                raise AdminError(400, f"{key} must be a string")
            fields[key] = value
    if creating and "department" not in fields:
        raise AdminError(400, "department is required")
    return fields


class AdminHandler(Handler):
    """JSON in, JSON out; never affected by faults or the down switch."""

    def do_GET(self) -> None:
        self.serve_admin()

    def do_POST(self) -> None:
        self.serve_admin()

    def do_DELETE(self) -> None:
        self.serve_admin()

    def serve_admin(self) -> None:
        try:
            status, answer = self._route()
        except AdminError as e:
            status, answer = e.status, {"error": str(e)}
        except BodyError as e:
            self.close_connection = True
            status, answer = int(e.status), {"error": str(e)}
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True
            return
        except Exception:
            LOG.exception("admin: internal error on %s %s", self.command, self.url_path())
            status, answer = 500, {"error": "internal error"}
        body = json.dumps(answer, ensure_ascii=False).encode("utf-8")
        try:
            self.send_bytes(status, body, "application/json; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            self.close_connection = True

    def _json_body(self, required: bool = True) -> Any:
        raw = self.read_body() if self.command == "POST" else b""
        if not raw.strip():
            if required:
                raise AdminError(400, "a JSON body is required")
            return None
        try:
            return json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise AdminError(400, f"bad JSON: {e}") from None

    def _query(self) -> dict[str, str]:
        return parse_form(urllib.parse.urlsplit(self.path).query)

    def _route(self) -> tuple[int, Any]:
        sim = self.server.sim
        path = self.url_path().rstrip("/") or "/"
        method = self.command
        query = self._query()

        def need(expected: str) -> None:
            if method != expected:
                raise AdminError(405, f"{path} wants {expected}")

        if path == "/health":
            need("GET")
            return 200, {"ok": True, "main_up": sim.main.is_up() if sim.main else False}
        if path == "/calls":
            need("GET")
            since = as_int(query.get("since", "0"))
            if since is None:
                raise AdminError(400, "since must be an integer")
            return 200, {"calls": sim.store.calls(since)}
        if path == "/calls/count":
            need("GET")
            write = query.get("write")
            if write not in (None, "0", "1"):
                raise AdminError(400, "write must be 0 or 1")
            return 200, {"count": sim.store.calls_count(
                query.get("func"), None if write is None else write == "1", query.get("outcome"))}
        if path == "/calls/reset":
            need("POST")
            self._json_body(required=False)
            sim.store.calls_reset()
            return 200, {"ok": True}
        if path == "/faults":
            if method == "GET":
                return 200, {"faults": sim.faults.get()}
            need("POST")
            try:
                faults = sim.faults.update(self._json_body())
            except ValueError as e:
                raise AdminError(400, str(e)) from None
            LOG.info("admin: faults set to %s", json.dumps(faults))
            return 200, {"ok": True, "faults": faults}
        if path == "/faults/bad/off":
            need("POST")
            self._json_body(required=False)
            faults = sim.faults.bad_off()
            LOG.info("admin: bad answers off")
            return 200, {"ok": True, "faults": faults}
        if path == "/faults/reset":
            need("POST")
            self._json_body(required=False)
            sim.faults.reset()
            LOG.info("admin: faults cleared")
            return 200, {"ok": True}
        if path in ("/down", "/up"):
            need("POST")
            self._json_body(required=False)
            assert sim.main is not None
            try:
                changed = sim.main.down() if path == "/down" else sim.main.up()
            except OSError as e:
                raise AdminError(500, str(e)) from None
            LOG.info("admin: main listener %s%s", path[1:], "" if changed else " (already)")
            return 200, {"ok": True, "changed": changed}
        if path == "/sessions/expire":
            need("POST")
            self._json_body(required=False)
            return 200, {"ok": True, "expired": sim.store.sessions_expire()}
        if path == "/seed":
            need("POST")
            try:
                counts = sim.store.seed(self._json_body())
            except SeedError as e:
                raise AdminError(400, str(e)) from None
            LOG.info("admin: seeded %s", json.dumps(counts))
            return 200, {"ok": True, **counts}
        if path == "/tasks":
            if method == "GET":
                dept = None
                if query.get("department", "") != "":
                    dept = as_int(query["department"])
                    if dept is None:
                        raise AdminError(400, "department must be an integer")
                return 200, {"tasks": sim.store.task_list_raw(dept)}
            need("POST")
            return 200, {"id": sim.store.task_create(_admin_task_fields(self._json_body(), True))}
        if path == "/tasks/bulk":
            need("POST")
            return 200, self._bulk(self._json_body())
        m = re.fullmatch(r"/tasks/(\d{1,18})", path)
        if m:
            tid = int(m.group(1))
            if method == "GET":
                task = sim.store.task_get(tid)
                if task is None:
                    raise AdminError(404, f"no task {tid}")
                return 200, task
            if method == "DELETE":
                try:
                    sim.store.task_delete([tid])
                except _Missing:
                    raise AdminError(404, f"no task {tid}") from None
                return 200, {"ok": True}
            need("POST")
            if not sim.store.task_change(tid, _admin_task_fields(self._json_body(), False)):
                raise AdminError(404, f"no task {tid}")
            return 200, sim.store.task_get(tid)
        raise AdminError(404, f"no such admin endpoint: {path}")

    def _bulk(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise AdminError(400, "bulk wants a JSON object")
        data = dict(data)
        count = data.pop("count", None)
        prefix = data.pop("name_prefix", "task-")
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= MAX_BULK:
            raise AdminError(400, f"count must be an integer in 1..{MAX_BULK}")
        if not isinstance(prefix, str):
            raise AdminError(400, "name_prefix must be a string")
        if "name" in data:
            raise AdminError(400, "bulk names come from name_prefix")
        fields = _admin_task_fields(data, True)
        first, last = self.server.sim.store.task_bulk(count, fields, prefix)
        LOG.info("admin: bulk-created tasks %d..%d", first, last)
        return {"first_id": first, "last_id": last}


# ---------------------------------------------------------------------------
# Process


def write_ready_file(path: str, info: dict[str, Any]) -> None:
    """Writes info as JSON to path atomically: a reader sees all or nothing."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(info, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def url_host(host: str) -> str:
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def parse_args(argv: Optional[list[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="BILLmanager emulator for remotetask's tests")
    p.add_argument("--db", required=True, help="SQLite file holding all state")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="API port (0 picks a free one)")
    p.add_argument("--admin-port", type=int, default=0, help="admin port (0 picks a free one)")
    p.add_argument("--ready-file", help="written (atomically) when both listeners are up")
    p.add_argument("--seed", help="seed JSON file")
    p.add_argument("--user", action="append", default=[], metavar="LOGIN:PASSWORD")
    p.add_argument("--department", action="append", default=[], metavar="ID:NAME")
    p.add_argument("--staff", action="append", default=[], metavar="ID:NAME")
    p.add_argument("--account", action="append", default=[], metavar="ID:NAME")
    p.add_argument("--page-size", type=int, default=1000)
    p.add_argument("--session-ttl", type=float, default=3600.0)
    p.add_argument("--tls-cert")
    p.add_argument("--tls-key")
    p.add_argument("--log-file")
    args = p.parse_args(argv)
    if args.page_size < 1:
        p.error("--page-size must be positive")
    if args.session_ttl <= 0:
        p.error("--session-ttl must be positive")
    if bool(args.tls_cert) != bool(args.tls_key):
        p.error("--tls-cert and --tls-key go together")
    return args


def setup_logging(path: Optional[str]) -> None:
    handler: logging.Handler
    handler = logging.FileHandler(path, encoding="utf-8") if path else logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(
        "%(asctime)s billsim[%(process)d] %(levelname)s %(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.INFO)
    LOG.propagate = False


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging(args.log_file)

    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        store = Store(args.db)
    except sqlite3.Error as e:
        LOG.error("cannot open database %r: %s", args.db, e)
        return 1
    try:
        seed_docs = []
        if args.seed:
            with open(args.seed, encoding="utf-8") as f:
                seed_docs.append(json.load(f))
        if args.user or args.department or args.staff or args.account:
            seed_docs.append(seed_from_flags(args.user, args.department, args.staff, args.account))
        for doc in seed_docs:
            LOG.info("seeded %s", json.dumps(store.seed(doc)))
    except (OSError, ValueError) as e:
        # SeedError and json's errors are ValueErrors; neither quotes a
        # password (a seed error names the login only).
        LOG.error("cannot seed: %s", e)
        store.close()
        return 2

    tls: Optional[ssl.SSLContext] = None
    if args.tls_cert:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            tls.load_cert_chain(args.tls_cert, args.tls_key)
        except (OSError, ssl.SSLError) as e:
            LOG.error("cannot load the TLS certificate or key: %s", e)
            store.close()
            return 2

    sim = Sim(store, Api(store, args.page_size), Faults(), args.session_ttl)
    main_listener = MainListener(sim, args.host, args.port, tls)
    sim.main = main_listener
    admin: Optional[Server] = None
    try:
        main_listener.up()
        admin = Server((args.host, args.admin_port), AdminHandler, sim, None)
    except OSError as e:
        LOG.error("cannot listen: %s", e)
        main_listener.down()
        store.close()
        return 1
    threading.Thread(target=admin.serve_forever, kwargs={"poll_interval": 0.1},
                     name="admin-listener", daemon=True).start()

    scheme = "https" if tls else "http"
    info = {"port": main_listener.port, "admin_port": admin.server_address[1], "pid": os.getpid(),
            "url": f"{scheme}://{url_host(args.host)}:{main_listener.port}/billmgr"}
    LOG.info("listening: api %s, admin port %d", info["url"], info["admin_port"])
    if args.ready_file:
        write_ready_file(args.ready_file, info)

    while not stop.wait(0.5):
        pass

    LOG.info("stopping")
    main_listener.down()
    admin.shutdown()
    admin.server_close()
    admin.cut_connections()
    store.close()
    if args.ready_file:
        try:
            os.unlink(args.ready_file)
        except OSError:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
