"""soak_faults.py - the soak's watch on the backlog and its faults.

BacklogWatch asks both daemons for their status once a second (the control
socket's {"cmd":"status"}, what `remotetaskctl --command status` asks) and
keeps the backlog: the client's outbox, the messages ready or unacked in
the client's forward and reverse queues, and those waiting in its retry
queues. A daemon that does not answer, or a queue whose depth its daemon
cannot tell (the broker is frozen), makes the backlog unknown at that
moment.

Injector runs the faults of issue 9 that the soak repeats, in turn, at its
scheduled times:

  1 broker-blackhole  the node frozen with SIGSTOP for 30 s, then SIGCONT
  2 memory-alarm      set_vm_memory_high_watermark 0 for 30 s, then the
                      node's own value again
  3 queue-deleted     the client's forward queue deleted under the server's
                      consumer; once the server consumes again,
                      `remotetaskctl --command resync --all` on the client
                      (what the broker lost with the queue comes back).
                      At the soak's pace the queue is nearly always empty,
                      so that deleting it would lose nothing: the target
                      emulator first answers slowly (SLOW_MS a call) until
                      at least LOSE_AT_LEAST messages wait in the queue
                      (for at most SLOW_DEADLINE_S), as a slow target API
                      would leave them, and is fast again once it is gone

For each it records when it started and ended (seconds since the load
began), the backlog's steady level before it (the highest backlog of the
60 s before, at least one second of load) and the time from its end until
the backlog was back at that level for 5 s running.

Python 3 standard library only.
"""
import re
import threading
import time

import soak_rig

FAULTS = {1: "broker-blackhole", 2: "memory-alarm", 3: "queue-deleted"}
FAULT_S = 30            # how long faults 1 and 2 last (issue 9)
STEADY_WINDOW_S = 60    # the window before a fault that sets its steady level
RECOVERED_FOR_S = 5     # the backlog must stay at that level this long
RECONSUME_DEADLINE_S = 120
SLOW_MS = 2000
LOSE_AT_LEAST = 20
SLOW_DEADLINE_S = 60


class BacklogWatch(threading.Thread):
    def __init__(self, client, server, client_id, clock):
        super().__init__(name="backlog", daemon=True)
        self.client = client
        self.server = server
        self.fwd = "remotetask.forward.%s" % client_id
        self.rev = "remotetask.reverse.%s" % client_id
        self.retry = "remotetask.retry.%s." % client_id
        self.dead = "remotetask.dead.%s." % client_id
        self.clock = clock
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.history = []  # (t, backlog or None)
        self.last = {}

    @staticmethod
    def _queues(st):
        return {q.get("name"): q for q in (st or {}).get("queues") or []}

    def measure(self):
        """The backlog now: a dict of its parts and "total" (None when
        unknown)."""
        cs = self.client.status(2.0)
        ss = self.server.status(2.0)
        parts = {"client_status": cs is not None, "server_status": ss is not None,
                 "outbox": None, "forward_ready": None, "forward_unacked": None,
                 "reverse_ready": None, "reverse_unacked": None, "retry_ready": None,
                 "dead_ready": None, "client_broker": (cs or {}).get("broker", {}).get("state"),
                 "server_broker": (ss or {}).get("broker", {}).get("state")}
        if cs:
            parts["outbox"] = (cs.get("outbox") or {}).get("backlog")
        cq, sq = self._queues(cs), self._queues(ss)
        fq = sq.get(self.fwd) or cq.get(self.fwd)
        if fq:
            parts["forward_ready"] = fq.get("ready")
        if self.fwd in sq:
            parts["forward_unacked"] = sq[self.fwd].get("unacked")
        rq = cq.get(self.rev) or sq.get(self.rev)
        if rq:
            parts["reverse_ready"] = rq.get("ready")
        if self.rev in cq:
            parts["reverse_unacked"] = cq[self.rev].get("unacked")
        retry = [q.get("ready") for n, q in {**sq, **cq}.items() if n and n.startswith(self.retry)]
        parts["retry_ready"] = None if any(r is None for r in retry) else sum(retry)
        dead = [q.get("ready") for n, q in {**sq, **cq}.items() if n and n.startswith(self.dead)]
        parts["dead_ready"] = None if any(r is None for r in dead) else sum(dead)
        keys = ("outbox", "forward_ready", "forward_unacked", "reverse_ready", "reverse_unacked",
                "retry_ready")
        vals = [parts[k] for k in keys]
        parts["total"] = None if any(v is None for v in vals) else sum(vals)
        return parts

    def run(self):
        while not self.stop.is_set():
            t0 = time.monotonic()
            parts = self.measure()
            with self.lock:
                self.last = parts
                self.history.append((self.clock(), parts["total"]))
            self.stop.wait(max(1.0 - (time.monotonic() - t0), 0.05))

    def window_max(self, since, until):
        with self.lock:
            vals = [b for t, b in self.history if since <= t <= until and b is not None]
        return max(vals) if vals else None

    def peak(self, since, until):
        return self.window_max(since, until)

    def settled_since(self, level, since):
        """The time from which the backlog has stayed at or below level for
        RECOVERED_FOR_S seconds, looking at samples after since; None when
        that has not happened yet."""
        with self.lock:
            samples = [(t, b) for t, b in self.history if t >= since]
        start = None
        for t, b in samples:
            if b is not None and b <= level:
                if start is None:
                    start = t
                if t - start >= RECOVERED_FOR_S:
                    return start
            else:
                start = None
        return None


class Injector(threading.Thread):
    """Injects faults at times (seconds since the load began), their
    numbers taken in turn from order (1, 2, 3, 1, 2, 3, ... by default);
    the load's clock is clock()."""

    def __init__(self, times, order, rabbit, target, latency, client, server, ctl_bin,
                 client_conf, client_id, watch, clock, min_steady, baseline_taken, baseline_at,
                 say):
        super().__init__(name="faults", daemon=True)
        self.times = times
        self.order = order
        self.rabbit = rabbit
        self.target = target
        self.latency = latency
        self.client = client
        self.server = server
        self.ctl_bin = ctl_bin
        self.conf = client_conf
        self.fwd = "remotetask.forward.%s" % client_id
        self.watch = watch
        self.clock = clock
        self.min_steady = min_steady
        # The RSS baseline is read at baseline_at: a fault due then waits
        # for the reading (baseline_taken), so that it shows the steady load.
        self.baseline_taken = baseline_taken
        self.baseline_at = baseline_at
        self.say = say
        self.stop = threading.Event()
        self.records = []
        self.problems = []

    def run(self):
        for i, at in enumerate(self.times):
            while self.clock() < at:
                if self.stop.wait(min(at - self.clock(), 1.0)):
                    return
            if at >= self.baseline_at:
                self.baseline_taken.wait()
            number = self.order[i % len(self.order)]
            rec = {"t_s": int(round(self.clock())), "case": FAULTS[number], "number": number}
            self.records.append(rec)
            try:
                self.inject(number, rec)
            except (soak_rig.RigError, OSError) as e:
                rec["error"] = str(e)
                self.problems.append("fault %s at %d s: %s" % (rec["case"], rec["t_s"], e))
            self.say("fault %s: started at %.0f s, ended at %.0f s%s" % (
                rec["case"], rec.get("started_s", 0), rec.get("ended_s", 0),
                "; " + rec["error"] if "error" in rec else ""))
            self.recovery(rec)
            if self.stop.is_set():
                return

    def inject(self, number, rec):
        # The steady level: the backlog since the previous fault's effects
        # were over, at most STEADY_WINDOW_S back.
        now = self.clock()
        since = now - STEADY_WINDOW_S
        for prev in self.records[:-1]:
            over = prev.get("ended_s")
            if over is not None and prev.get("recovered_in_s") is not None:
                over += prev["recovered_in_s"] + RECOVERED_FOR_S
            since = max(since, over if over is not None else now)
        steady = self.watch.window_max(since, now)
        rec["steady_backlog"] = max(steady if steady is not None else 0, self.min_steady)
        if number == 1:
            rec["started_s"] = round(self.clock(), 1)
            if not self.rabbit.freeze():
                raise soak_rig.RigError("rabbitnode freeze failed")
            frozen = time.monotonic()
            try:
                time.sleep(max(FAULT_S - (time.monotonic() - frozen), 0))
            finally:
                thawed = self.rabbit.thaw()
            rec["ended_s"] = round(self.clock(), 1)
            if not thawed:
                raise soak_rig.RigError("rabbitnode thaw failed")
        elif number == 2:
            rc, out = self.rabbit.ctl("eval", "vm_memory_monitor:get_vm_memory_high_watermark().")
            m = re.fullmatch(r"\s*(?:\{absolute,(\d+)\}|([0-9.]+))\s*", out or "")
            if rc != 0 or not m:
                raise soak_rig.RigError("cannot read the node's memory watermark: %r" % out)
            back = ["absolute", m.group(1)] if m.group(1) else [m.group(2)]
            rec["watermark"] = " ".join(back)
            # The alarm lasts FAULT_S from when the call that raises it
            # returned: rabbitmqctl boots an Erlang VM, seconds on a busy
            # machine, and that is not the alarm.
            rc, out = self.rabbit.ctl("-q", "set_vm_memory_high_watermark", "0")
            if rc != 0:
                raise soak_rig.RigError("set_vm_memory_high_watermark 0 failed: %s" % out.strip())
            rec["started_s"] = round(self.clock(), 1)
            set_at = time.monotonic()
            blocked = False
            try:
                while time.monotonic() - set_at < FAULT_S:
                    cs = self.client.status(1.0)
                    blocked = blocked or bool(cs and cs.get("broker", {}).get("blocked"))
                    time.sleep(1.0)
            finally:
                rc, out = self.rabbit.ctl("-q", "set_vm_memory_high_watermark", *back)
            rec["ended_s"] = round(self.clock(), 1)
            rec["client_saw_blocked"] = blocked
            if rc != 0:
                raise soak_rig.RigError("setting the watermark back failed: %s" % out.strip())
        else:
            rec["started_s"] = round(self.clock(), 1)
            self.target.admin("POST", "/faults", {"latency_ms": SLOW_MS})
            try:
                deadline = time.monotonic() + SLOW_DEADLINE_S
                q = None
                while time.monotonic() < deadline:
                    q = self.rabbit.queue(self.fwd)
                    if q and q["ready"] >= LOSE_AT_LEAST:
                        break
                    time.sleep(0.2)
                rec["slowed_s"] = round(self.clock() - rec["started_s"], 1)
                q = self.rabbit.queue(self.fwd)
                rec["ready_at_delete"] = q["ready"] if q else None
                self.rabbit.delete_queue(self.fwd)
                deleted = self.clock()
            finally:
                self.target.admin("POST", "/faults", {"latency_ms": self.latency})

            def consumed():
                try:
                    q = self.rabbit.queue(self.fwd, timeout=5.0)
                except (OSError, soak_rig.RigError):
                    return False
                return q is not None and q["consumers"] >= 1

            soak_rig.wait_for(consumed, RECONSUME_DEADLINE_S, step=0.2,
                              what="the server consuming %s again" % self.fwd)
            rec["reconsumed_after_s"] = round(self.clock() - deleted, 1)
            t0 = time.monotonic()
            rc, out = soak_rig.ctl(self.ctl_bin, self.conf, ["--command", "resync", "--all"],
                                   timeout=600)
            rec["resync_exit"] = rc
            rec["resync_took_s"] = round(time.monotonic() - t0, 1)
            rec["resync_said"] = (out or "").strip()[-300:]
            rec["ended_s"] = round(self.clock(), 1)
            if rc != 0:
                raise soak_rig.RigError("remotetaskctl --command resync --all exited %s: %s" % (
                    rc, (out or "").strip()[-300:]))

    def recovery(self, rec):
        """Waits until the backlog is back at its steady level (for at most
        10 minutes) and records how long that took after the fault ended."""
        end = rec.get("ended_s")
        if end is None:
            rec["recovered_in_s"] = None
            return
        deadline = time.monotonic() + 600
        at = None
        while time.monotonic() < deadline:
            at = self.watch.settled_since(rec["steady_backlog"], end)
            if at is not None:
                break
            time.sleep(1.0)
        rec["peak_backlog"] = self.watch.peak(rec.get("started_s", rec["t_s"]), self.clock())
        rec["recovered_in_s"] = round(max(at - end, 0.0), 1) if at is not None else None
        if at is None:
            self.problems.append("fault %s at %d s: the backlog was not back at %d within 600 s" % (
                rec["case"], rec["t_s"], rec["steady_backlog"]))
        self.say("fault %s: backlog back at its steady level (%d) %s" % (
            rec["case"], rec["steady_backlog"],
            "%.0f s after its end" % rec["recovered_in_s"] if at is not None
            else "NOT within 600 s"))
