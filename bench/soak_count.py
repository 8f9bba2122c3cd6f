"""soak_count.py - what the soak sent and what arrived, by the rules of the
integration tests.

Forward (tests/integration/harness_flow.c, harness_flow_count): the source
tasks of the mapped department are matched to the target tasks through the
origin block the server writes into each target note
("--- remotetask: from client C, task T ---", common/notes.h):

  sent        source tasks
  applied     source tasks that have a target task
  lost        source tasks that have none
  duplicated  target tasks beyond one per source task
  stale       source tasks whose (first) target task holds other fields
  foreign     target tasks of the department without an origin of ours

A target task holds the source's fields when name, type, deadline and
status are equal and every line of the source's note is in the target's
note (harness_flow_fields_match). One difference, because the soak runs
both directions at once: the line check reads the source note's *native*
text (common/notes.c, notes_native), since the blocks the reverse path
appended to it ("from the remote side") are the target's own text and
never travel forward. The soak also counts the lines it appended to source
notes (each one unique) in the target notes: a line there more than once
is a note applied twice.

Reverse: every change the soak made on the target appended a unique line
to the target task's note, together with a new status and performer. The
reverse path brings the target's new note text back into the source note
once (consumer/reverse.c), so each change is counted by its line:

  changes     changes made on the target
  applied     changes whose line is in the source note
  lost        changes whose line is not
  duplicated  lines found more than once, beyond the first
  stale       changed tasks whose final status or (mapped) performer on
              the source differ from the target's

Status and performer carry state, not deltas: two changes of one task
within a sync interval legitimately come back as one, so only their final
values are compared.

Python 3 standard library only; bench/soak_test_count.py tests it.
"""

NOTES_HEAD = "--- remotetask: "
NOTES_TAIL = " ---"
NOTES_END = "--- remotetask: end ---"


def _core(line):
    return line[:-1] if line.endswith("\r") else line


def _is_head(line):
    """A block header (not the end line): common/notes.c, notes_is_head."""
    core = _core(line)
    if len(core) < len(NOTES_HEAD) + len(NOTES_TAIL) + 1:
        return False
    if not core.startswith(NOTES_HEAD) or not core.endswith(NOTES_TAIL):
        return False
    return core != NOTES_END


def _is_end(line):
    return _core(line) == NOTES_END


def _line_end(text, i):
    n = text.find("\n", i)
    return len(text) if n < 0 else n


def native(note):
    """The note without the blocks the bridge appended (notes_native)."""
    note = note or ""
    out = ""
    i = 0
    while i < len(note):
        n = _line_end(note, i)
        if not _is_head(note[i:n]):
            take = n + 1 if n < len(note) else n
            out += note[i:take]
            i = take
            continue
        # The separator the bridge put before the block: the newline ending
        # the previous line and one blank line.
        for _ in range(2):
            if out.endswith("\n"):
                out = out[:-1]
        i = n + 1 if n < len(note) else n
        while i < len(note):
            m = _line_end(note, i)
            end = _is_end(note[i:m])
            i = m
            if end:
                break  # the newline after the end line stays with the text after it
            if i < len(note) and note[i] == "\n":
                i += 1
    return out


def has_origin(note, origin):
    """1 when note holds a block whose origin is exactly origin."""
    want = NOTES_HEAD + origin + NOTES_TAIL
    for line in (note or "").split("\n"):
        if _is_head(line) and _core(line) == want:
            return True
    return False


def _strtoll(text):
    """The leading integer of text as strtoll reads it, 0 when none."""
    s = text.lstrip(" \t\n\r\f\v")
    j = 1 if s[:1] in ("+", "-") else 0
    k = j
    while k < len(s) and s[k].isdigit() and s[k].isascii():
        k += 1
    return int(s[:k]) if k > j else 0


def note_origin(note, client):
    """The source task a target note names as its origin for client, or 0
    (harness_flow_note_origin)."""
    prefix = "--- remotetask: from client %s, task " % client
    note = note or ""
    p = note.find(prefix)
    if p < 0:
        return 0
    task = _strtoll(note[p + len(prefix):])
    origin = "from client %s, task %d" % (client, task)
    return task if task > 0 and has_origin(note, origin) else 0


def _text(task, key):
    v = task.get(key)
    return v if isinstance(v, str) else ""


def _int(task, key):
    v = task.get(key)
    if isinstance(v, bool):
        return 0
    if isinstance(v, int):
        return v
    if isinstance(v, str):
        return _strtoll(v)
    return 0


def fields_match(src, dst):
    """None when dst holds src's forward fields, else what differs
    (harness_flow_fields_match, on the source's native note)."""
    for key in ("name", "type", "deadline"):
        if _text(src, key) != _text(dst, key):
            return "task %d -> %d: %s %r on the target, %r on the source" % (
                _int(src, "id"), _int(dst, "id"), key, _text(dst, key), _text(src, key))
    if _int(src, "status") != _int(dst, "status"):
        return "task %d -> %d: status %d on the target, %d on the source" % (
            _int(src, "id"), _int(dst, "id"), _int(dst, "status"), _int(src, "status"))
    target = _text(dst, "note")
    for line in native(_text(src, "note")).split("\n"):
        if 0 < len(line) < 1024 and line not in target:
            return "task %d -> %d: the target's note lacks %r" % (
                _int(src, "id"), _int(dst, "id"), line)
    return None


def _line_counts(note, wanted):
    """How many times each line of wanted is a whole line of note."""
    counts = {}
    for line in (note or "").split("\n"):
        line = _core(line)
        if line in wanted:
            counts[line] = counts.get(line, 0) + 1
    return counts


def count_forward(client, src_tasks, dst_tasks, note_lines=None):
    """The forward figures of the source tasks src_tasks against the target
    tasks dst_tasks (the admin API's task objects). note_lines maps a
    source task id to the unique lines the soak appended to its note; each
    must be in the target note once."""
    by_id = {_int(t, "id"): t for t in src_tasks}
    hits = {}
    first = {}
    foreign = 0
    for t in dst_tasks:
        origin = note_origin(_text(t, "note"), client)
        if origin not in by_id:
            foreign += 1
            continue
        hits[origin] = hits.get(origin, 0) + 1
        first.setdefault(origin, t)
    c = {"sent": len(by_id), "applied": 0, "lost": 0, "duplicated": 0, "stale": 0,
         "foreign": foreign, "note_lines": 0, "note_lines_missing": 0,
         "note_lines_duplicated": 0, "first_lost": None, "first_stale": None}
    for sid in sorted(by_id):
        n = hits.get(sid, 0)
        if not n:
            if c["first_lost"] is None:
                c["first_lost"] = sid
            c["lost"] += 1
            continue
        c["applied"] += 1
        c["duplicated"] += n - 1
        why = fields_match(by_id[sid], first[sid])
        if why:
            if c["first_stale"] is None:
                c["first_stale"] = why
            c["stale"] += 1
        lines = (note_lines or {}).get(sid)
        if lines:
            got = _line_counts(_text(first[sid], "note"), set(lines))
            for line in lines:
                c["note_lines"] += 1
                k = got.get(line, 0)
                if k == 0:
                    c["note_lines_missing"] += 1
                c["note_lines_duplicated"] += max(k - 1, 0)
    return c


def count_reverse(changes, src_by_id, dst_by_id, performers):
    """The reverse figures of changes (dicts with src, dst, line: the source
    task, the target task and the unique note line of each change made on
    the target) against the tasks as they are now (src_by_id, dst_by_id:
    id -> admin task object). performers maps a target staff id to the
    source staff id the client is configured with."""
    c = {"changes": len(changes), "applied": 0, "lost": 0, "duplicated": 0, "stale": 0,
         "tasks": 0, "target_lost": 0, "first_lost": None, "first_stale": None}
    wanted = {}
    for ch in changes:
        wanted.setdefault(ch["src"], set()).add(ch["line"])
    found = {sid: _line_counts(_text(src_by_id.get(sid, {}), "note"), lines)
             for sid, lines in wanted.items()}
    # The target notes must still hold every line the soak appended to
    # them: a line gone there was overwritten on the target, not lost on
    # the way back, and is counted apart (target_lost).
    by_dst = {}
    for ch in changes:
        by_dst.setdefault(ch["dst"], set()).add(ch["line"])
    kept = {did: _line_counts(_text(dst_by_id.get(did, {}), "note"), lines)
            for did, lines in by_dst.items()}
    for ch in changes:
        n = found.get(ch["src"], {}).get(ch["line"], 0)
        if kept.get(ch["dst"], {}).get(ch["line"], 0) == 0:
            c["target_lost"] += 1
        if n == 0:
            c["lost"] += 1
            if c["first_lost"] is None:
                c["first_lost"] = "change %r of target task %d (source task %d)" % (
                    ch["line"], ch["dst"], ch["src"])
            continue
        c["applied"] += 1
    for sid, counts in found.items():
        c["duplicated"] += sum(max(k - 1, 0) for k in counts.values())
    pairs = {}
    for ch in changes:
        pairs[ch["src"]] = ch["dst"]
    c["tasks"] = len(pairs)
    for sid, did in sorted(pairs.items()):
        src, dst = src_by_id.get(sid), dst_by_id.get(did)
        if src is None or dst is None:
            c["stale"] += 1
            if c["first_stale"] is None:
                c["first_stale"] = "task %d or its target task %d is gone" % (sid, did)
            continue
        remote = dst.get("performer")
        want = performers.get(_int(dst, "performer")) if remote not in (None, "") else None
        have = src.get("performer")
        have = None if have in (None, "") else _int(src, "performer")
        if _int(src, "status") != _int(dst, "status") or have != want:
            c["stale"] += 1
            if c["first_stale"] is None:
                c["first_stale"] = ("task %d: status %d performer %s on the source, status %d "
                                    "performer %s (mapped: %s) on target task %d" % (
                                        sid, _int(src, "status"), have, _int(dst, "status"),
                                        remote, want, did))
    return c
