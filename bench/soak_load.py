"""soak_load.py - the soak's steady load, both ways.

ForwardLoad: task events on the source at a fixed rate, in one batch a
second as the tests record them (harness_record_events): the second's new
tasks are created in one POST /tasks/bulk on the source emulator's admin
API (a quarter of the events by default), and a run of existing tasks
(contiguous ids from a random start) is changed one by one as an operator
would change them: a new name, half of the time a new deadline, and on
even task ids half of the time a new line in the note. The events are
then recorded by a thread of their own, so that the next second's changes
are made meanwhile: one through `remotetaskctl --command taskevent --elid
N`, what BILLmanager's event handler runs after task.edit, and the rest in
a transaction per run of ids with `rtbench_tool outbox` (bench/benchtool.c:
what taskevent does, for a range of ids), followed by one wake on the
client's control socket. Events waiting when the recorder comes round are
recorded together. A process per event, as BILLmanager's handler spawns,
costs tens of ms of CPU each on a loaded 2-core machine: at 20 a second the
harness would take most of a core from the daemons it measures.

ReverseLoad: state changes on the target at a fixed rate, made as target
staff would make them (POST /tasks/ID on the target emulator's admin API):
a new status, a performer (one the client maps, or nobody) and a new line
in the note. Only target tasks whose source task has an odd id change on
the target, and only source tasks with an even id get note lines on the
source: the emulator writes a whole note at once, so a person appending to
a note at the moment the bridge appends a block to the same note would
overwrite one or the other, and that race belongs to the people, not to
the bridge. Name and deadline changes go to every task, so task messages
and state messages of the same task cross all the time.

Each thread keeps its rate by an absolute schedule (event k is due at
start + k / rate): a call that took longer is caught up without sleeping,
and the figures say how far behind it ever fell. Every note line the load
writes is unique; soak_count.py counts them.

Python 3 standard library only.
"""
import queue
import threading
import time

import soak_count
import soak_rig

# About the size of a typical task (the note of bench/run's tasks).
TASK_NOTE = ("The customer ordered a dedicated server with a custom RAID layout. Install the "
             "operating system, configure RAID 10 over the four disks, set up the management "
             "network and hand the server over to the customer with the access details. Call "
             "the customer before the handover.")


class Paced(threading.Thread):
    """A thread that runs step(k) at ticks per second until stop is set;
    step returns how many events it made."""

    def __init__(self, name, ticks):
        super().__init__(name=name, daemon=True)
        self.ticks = ticks
        self.stop = threading.Event()
        self.done = 0
        self.errors = 0
        self.first_error = None
        self.max_lag_s = 0.0
        self.started_at = None
        self.ended_at = None
        self.lock = threading.Lock()

    def run(self):
        self.started_at = time.monotonic()
        k = 0
        while not self.stop.is_set():
            due = self.started_at + k / self.ticks
            wait = due - time.monotonic()
            if wait > 0:
                if self.stop.wait(wait):
                    break
            else:
                self.max_lag_s = max(self.max_lag_s, -wait)
            try:
                self.done += self.step(k)
            except soak_rig.RigError as e:
                self.errors += 1
                if self.first_error is None:
                    self.first_error = str(e)
            k += 1
        self.ended_at = time.monotonic()

    def per_s(self):
        end = self.ended_at or time.monotonic()
        if not self.started_at or end <= self.started_at:
            return 0.0
        return self.done / (end - self.started_at)

    def step(self, k):
        raise NotImplementedError


def _share(k, per_tick):
    """How many of a rate of per_tick fall in tick k (fractions carried)."""
    return int((k + 1) * per_tick) - int(k * per_tick)


class Recorder(threading.Thread):
    """Records the events ForwardLoad queues (lists of source task ids)."""

    def __init__(self, load):
        super().__init__(name="forward-recorder", daemon=True)
        self.load = load
        self.q = queue.Queue()
        self.recorded = 0
        self.batches = 0
        self.busy_s = 0.0
        self.max_wait_s = 0.0

    def run(self):
        while True:
            item = self.q.get()
            if item is None:
                return
            ids, made = list(item[0]), item[1]
            stop = False
            while True:
                try:
                    more = self.q.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stop = True
                    break
                ids += more[0]
            self.max_wait_s = max(self.max_wait_s, time.monotonic() - made)
            t0 = time.monotonic()
            self.load.record(ids)
            self.busy_s += time.monotonic() - t0
            self.recorded += len(ids)
            self.batches += 1
            if stop:
                return


class ForwardLoad(Paced):
    def __init__(self, src, ctl_bin, tool_bin, client_conf, client_state, client_sock, client_id,
                 dept, rate, new_every, seed_count, rng):
        super().__init__("forward-load", 1.0)
        self.src = src
        self.ctl_bin = ctl_bin
        self.tool_bin = tool_bin
        self.conf = client_conf
        self.state = client_state
        self.sock = client_sock
        self.client_id = client_id
        self.dept = dept
        self.rate = rate
        self.new_every = new_every
        self.count = seed_count  # source task ids are 1..count: the emulator numbers in order
        self.rng = rng
        self.created = 0
        self.changed = 0
        self.lines = {}  # source task id -> the unique lines appended to its note
        self.n_line = 0
        self.taskevent_failed = 0
        self.first_taskevent_error = None
        self.via_taskevent = 0
        self.via_tool = 0
        self.recorder = Recorder(self)
        self.admin_s = 0.0

    def run(self):
        self.recorder.start()
        try:
            super().run()
        finally:
            self.recorder.q.put(None)
            self.recorder.join()

    def _failed(self, what, rc, out):
        self.taskevent_failed += 1
        if self.first_taskevent_error is None:
            self.first_taskevent_error = "%s: exit %s: %s" % (what, rc, (out or "").strip()[:300])

    def record(self, ids):
        """Records events for the task ids (one taskevent, ranges in bulk)."""
        if not ids:
            return
        ids = sorted(ids)
        rc, out = soak_rig.ctl(self.ctl_bin, self.conf,
                               ["--command", "taskevent", "--elid", str(ids[0])], timeout=60)
        if rc != 0:
            self._failed("taskevent --elid %d" % ids[0], rc, out)
        else:
            self.via_taskevent += 1
        runs, first, prev = [], None, None
        for t in ids[1:]:
            if first is None:
                first = prev = t
            elif t == prev + 1:
                prev = t
            else:
                runs.append((first, prev))
                first = prev = t
        if first is not None:
            runs.append((first, prev))
        for a, b in runs:
            rc, out = soak_rig.run([self.tool_bin, "outbox", self.state, self.client_id, str(a),
                                    str(b)], timeout=60)
            if rc != 0:
                self._failed("rtbench_tool outbox %d %d" % (a, b), rc, out)
            else:
                self.via_tool += b - a + 1
        soak_rig.control(self.sock, {"cmd": "wake", "reconcile": False}, 1.0)

    def step(self, k):
        t0 = time.monotonic()
        events = _share(k, self.rate)
        new = min(_share(k, self.rate / self.new_every), events)
        touched = []
        if new:
            r = self.src.admin("POST", "/tasks/bulk", {
                "department": self.dept, "count": new, "name_prefix": "soak task %d." % k,
                "type": "soak", "note": TASK_NOTE,
                "deadline": "2031-01-%02d 10:00:00" % (1 + k % 28)})
            first, last = int(r["first_id"]), int(r["last_id"])
            touched += range(first, last + 1)
            with self.lock:
                self.count = max(self.count, last)
            self.created += last - first + 1
        changes = min(events - new, self.count)
        start = self.rng.randint(1, self.count - changes + 1) if changes else 0
        for tid in range(start, start + changes):
            change = {"name": "soak task %d v%d" % (tid, k)}
            if self.rng.random() < 0.5:
                change["deadline"] = "2031-%02d-%02d 1%d:00:00" % (
                    1 + self.rng.randrange(12), 1 + self.rng.randrange(28), self.rng.randrange(10))
            if tid % 2 == 0 and self.rng.random() < 0.5:
                t = self.src.admin("GET", "/tasks/%d" % tid)
                self.n_line += 1
                line = "soak forward line %d" % self.n_line
                note = t.get("note") or ""
                change["note"] = note + ("\n" if note and not note.endswith("\n") else "") + line
                with self.lock:
                    self.lines.setdefault(tid, []).append(line)
            self.src.admin("POST", "/tasks/%d" % tid, change)
            touched.append(tid)
            self.changed += 1
        self.admin_s += time.monotonic() - t0
        self.recorder.q.put((touched, time.monotonic()))
        return len(touched)


class ReverseLoad(Paced):
    """Changes target tasks whose source task id is odd; finds the target
    tasks by their ids (the emulator numbers them in order) and their
    source task by the origin block in their note."""

    def __init__(self, dst, client_id, rate, performers, rng):
        super().__init__("reverse-load", rate)
        self.rate = rate
        self.dst = dst
        self.client_id = client_id
        self.performers = list(performers) + [None]
        self.rng = rng
        self.pool = []  # (target id, source id) of target tasks the load may change
        self.next_dst = 1
        self.last_scan = 0.0
        self.changes = []  # {src, dst, line, t}
        self.skipped = 0

    def scan(self):
        """Takes in the target tasks created since the last scan."""
        while True:
            t = self.dst.admin("GET", "/tasks/%d" % self.next_dst, ok404=True)
            if t is None:
                return
            src = soak_count.note_origin(t.get("note") or "", self.client_id)
            if src and src % 2 == 1:
                self.pool.append((self.next_dst, src))
            self.next_dst += 1

    def step(self, k):
        now = time.monotonic()
        if now - self.last_scan >= 1.0:
            self.last_scan = now
            self.scan()
        if not self.pool:
            self.skipped += 1
            return 0
        did, sid = self.rng.choice(self.pool)
        t = self.dst.admin("GET", "/tasks/%d" % did)
        status = self.rng.choice([s for s in (0, 1, 2) if s != int(t.get("status") or 0)])
        line = "soak reverse change %d" % (len(self.changes) + 1)
        note = t.get("note") or ""
        self.dst.admin("POST", "/tasks/%d" % did, {
            "status": status, "performer": self.rng.choice(self.performers),
            "note": note + ("\n" if note and not note.endswith("\n") else "") + line})
        with self.lock:
            self.changes.append({"src": sid, "dst": did, "line": line, "t": round(now, 3)})
        return 1
