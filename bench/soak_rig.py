"""soak_rig.py - the parts bench/soak runs: a private RabbitMQ node
(tests/harness/rabbitnode), BILLmanager emulators (tests/sim/billsim.py),
the two daemons and remotetaskctl.

Every process started here is remembered by the object that started it and
stopped by it, by its own pid (the node by its script, which stops only its
own process group). Passwords live in files of mode 0600 and reach the
node on a pipe, never argv or a log line.

Python 3 standard library only.
"""
import base64
import http.client
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.parse


# Held by whatever talks to a daemon's control socket (control(), ctl()) and
# by stats(): a connection of the soak's own open while /proc/PID/fd is
# counted would show as one descriptor more than the daemon holds.
CONTROL_LOCK = threading.Lock()


class RigError(Exception):
    """Something the soak cannot go on without; the text says what."""


def write_secret(path, text):
    """Writes text and a newline to path, readable by its owner only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.chmod(path, 0o600)


def random_secret():
    return os.urandom(12).hex()


def wait_for(cond, timeout, step=0.1, what="a condition"):
    """Polls cond() until it returns something true; returns it, or raises
    RigError when timeout seconds passed first."""
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() >= deadline:
            raise RigError("%s did not happen within %d s" % (what, timeout))
        time.sleep(step)


# ---- the RabbitMQ node -----------------------------------------------------


class Rabbit:
    """A private node in dir, through tests/harness/rabbitnode."""

    def __init__(self, root, dir_, log):
        self.script = os.path.join(root, "tests", "harness", "rabbitnode")
        self.dir = dir_
        self.log = log
        self.env = {}
        self.started = False

    def _run(self, args, timeout=120, input_=None):
        with open(self.log, "a") as err:
            r = subprocess.run([self.script] + args, input=input_, stdout=subprocess.PIPE,
                               stderr=err, text=True, timeout=timeout)
        return r

    def start(self):
        r = self._run(["start", self.dir], timeout=180)
        if r.returncode != 0:
            raise RigError("the RabbitMQ node did not start (see %s)" % self.log)
        self.started = True
        with open(os.path.join(self.dir, "env")) as f:
            for line in f:
                k, _, v = line.strip().partition("=")
                if k:
                    self.env[k] = v
        with open(self.env["RT_RABBIT_MGMT_CREDENTIALS"]) as f:
            self._auth = "Basic " + base64.b64encode(f.read().strip().encode()).decode()

    @property
    def amqp_port(self):
        return int(self.env["RT_AMQP_PORT"])

    def adduser(self, user, password):
        r = self._run(["adduser", self.dir, user, "-"], input_=password + "\n")
        if r.returncode != 0:
            raise RigError("cannot add the AMQP user %s (see %s)" % (user, self.log))

    def freeze(self):
        return self._run(["freeze", self.dir]).returncode == 0

    def thaw(self):
        return self._run(["thaw", self.dir]).returncode == 0

    def ctl(self, *args, timeout=120):
        """rabbitmqctl against the node: (exit status, stdout)."""
        r = self._run(["ctl", self.dir] + list(args), timeout=timeout)
        return r.returncode, r.stdout

    def mgmt(self, method, path, timeout=5.0):
        """A management API request: the decoded JSON answer (None for an
        empty body); raises OSError or RigError when it fails."""
        conn = http.client.HTTPConnection("127.0.0.1", int(self.env["RT_RABBIT_MGMT_PORT"]),
                                          timeout=timeout)
        try:
            conn.request(method, path, headers={"Authorization": self._auth})
            r = conn.getresponse()
            body = r.read()
        finally:
            conn.close()
        if r.status == 404:
            return None
        if not 200 <= r.status < 300:
            raise RigError("management API %s %s: HTTP %d" % (method, path, r.status))
        return json.loads(body) if body else None

    def queue(self, name, timeout=5.0):
        """{ready, unacked, consumers} of a queue, None when it does not
        exist; raises when the API does not answer."""
        q = self.mgmt("GET", "/api/queues/%2F/" + urllib.parse.quote(name, safe=""), timeout)
        if q is None:
            return None
        return {"ready": q.get("messages_ready", 0), "unacked": q.get("messages_unacknowledged", 0),
                "consumers": q.get("consumers", 0)}

    def delete_queue(self, name):
        self.mgmt("DELETE", "/api/queues/%2F/" + urllib.parse.quote(name, safe=""), timeout=30)

    def stop(self):
        if self.started:
            self.thaw()  # a frozen node must run to stop politely; the script does it too
            self._run(["stop", self.dir], timeout=120)
            self.started = False


# ---- an emulator --------------------------------------------------------------


class Sim:
    """tests/sim/billsim.py in dir, with its admin API."""

    def __init__(self, root, name, dir_):
        self.script = os.path.join(root, "tests", "sim", "billsim.py")
        self.name = name
        self.dir = dir_
        self.proc = None
        self.url = None
        self.admin_port = None
        self._local = threading.local()

    def start(self, seed):
        os.makedirs(self.dir, exist_ok=True)
        seed_path = os.path.join(self.dir, "seed.json")
        fd = os.open(seed_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(seed, f)
        ready = os.path.join(self.dir, "ready.json")
        if os.path.exists(ready):
            os.unlink(ready)
        out = open(os.path.join(self.dir, "sim.out"), "a")
        self.proc = subprocess.Popen(
            ["python3", self.script, "--db", os.path.join(self.dir, "sim.db"),
             "--ready-file", ready, "--seed", seed_path,
             "--log-file", os.path.join(self.dir, "sim.log")],
            stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        out.close()

        def up():
            if self.proc.poll() is not None:
                raise RigError("the %s emulator exited (see %s/sim.out)" % (self.name, self.dir))
            return os.path.exists(ready) and os.path.getsize(ready) > 0

        wait_for(up, 30, what="the %s emulator's start" % self.name)
        with open(ready) as f:
            info = json.load(f)
        self.url = info["url"]
        self.admin_port = int(info["admin_port"])

    def _conn(self):
        c = getattr(self._local, "conn", None)
        if c is None:
            c = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=60)
            self._local.conn = c
        return c

    def admin(self, method, path, body=None, ok404=False):
        """An admin API request on a keep-alive connection of this thread:
        the decoded answer; None for a 404 when ok404. Raises RigError."""
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if data is not None else {}
        for attempt in (1, 2):
            c = self._conn()
            try:
                c.request(method, path, body=data, headers=headers)
                r = c.getresponse()
                raw = r.read()
                break
            except (OSError, http.client.HTTPException) as e:
                c.close()
                self._local.conn = None
                if attempt == 2:
                    raise RigError("%s emulator admin %s %s: %s" % (self.name, method, path, e))
        if r.status == 404 and ok404:
            return None
        if r.status != 200:
            raise RigError("%s emulator admin %s %s: HTTP %d %s" % (
                self.name, method, path, r.status, raw[:200].decode(errors="replace")))
        return json.loads(raw)

    def tasks(self, dept):
        return self.admin("GET", "/tasks?department=%d" % dept)["tasks"]

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


# ---- a daemon ------------------------------------------------------------------


def control(sock_path, request, timeout=2.0):
    """One request on a daemon's control socket (common/ctlproto.h: a JSON
    line each way): the decoded answer, or None when the daemon did not
    answer within timeout seconds."""
    with CONTROL_LOCK:
        return _control(sock_path, request, timeout)


def _control(sock_path, request, timeout):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(sock_path)
        s.sendall((json.dumps(request, separators=(",", ":")) + "\n").encode())
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            s.settimeout(max(deadline - time.monotonic(), 0.01))
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            if len(buf) > 1 << 20:
                return None
        line = buf.split(b"\n", 1)[0]
        return json.loads(line) if line else None
    except (OSError, ValueError):
        return None
    finally:
        s.close()


def proc_stats(pid):
    """What /proc says of a process: rss_kb (VmRSS), hwm_kb (VmHWM),
    anon_kb (RssAnon), fds (entries of /proc/PID/fd) and fd_kinds (how
    many are sockets, pipes, anon inodes, files), cpu_s (utime + stime).
    None when the process is gone."""
    try:
        st = {}
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                    st[k] = int(v.split()[0])
        kinds = {}
        fds = os.listdir("/proc/%d/fd" % pid)
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            # "socket:[123]", "pipe:[45]", "anon_inode:[eventfd]", or a path
            kind = "file" if target.startswith("/") or ":" not in target else target.split(":")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
    except (OSError, ValueError, IndexError):
        return None
    return {"rss_kb": st.get("VmRSS", 0), "hwm_kb": st.get("VmHWM", 0),
            "anon_kb": st.get("RssAnon", 0), "file_kb": st.get("RssFile", 0), "fds": len(fds),
            "fd_kinds": kinds, "cpu_s": round(ticks / os.sysconf("SC_CLK_TCK"), 2)}


class Daemon:
    """remotetaskd -c conf, its log in log."""

    def __init__(self, name, binary, conf, sock, log):
        self.name = name
        self.binary = binary
        self.conf = conf
        self.sock = sock
        self.log = log
        self.proc = None

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def start(self):
        out = open(self.log, "a")
        self.proc = subprocess.Popen([self.binary, "-c", self.conf], stdin=subprocess.DEVNULL,
                                     stdout=out, stderr=subprocess.STDOUT)
        out.close()

        def answers():
            if self.proc.poll() is not None:
                raise RigError("the %s daemon exited with %d (see %s)" % (
                    self.name, self.proc.returncode, self.log))
            r = control(self.sock, {"cmd": "ping"}, 1.0)
            return r is not None and r.get("ok")

        wait_for(answers, 30, step=0.2, what="the %s daemon's first answer" % self.name)

    def status(self, timeout=2.0):
        return control(self.sock, {"cmd": "status"}, timeout)

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stats(self):
        with CONTROL_LOCK:
            return proc_stats(self.proc.pid) if self.running() else None

    def log_has(self, text):
        try:
            with open(self.log, errors="replace") as f:
                return any(text in line for line in f)
        except OSError:
            return False

    def log_count(self, text):
        try:
            with open(self.log, errors="replace") as f:
                return sum(1 for line in f if text in line)
        except OSError:
            return 0

    def stop(self, timeout=30):
        """SIGTERM, then SIGKILL after timeout seconds: the exit status
        (negative for a signal), None when it was not running."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        return rc


def run(argv, timeout=120):
    """Runs argv: (exit status, stdout + stderr); (None, why) on a timeout."""
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %d s" % timeout
    return r.returncode, r.stdout


def ctl(binary, conf, args, timeout=120):
    """remotetaskctl -c conf ARGS: (exit status, stdout + stderr)."""
    with CONTROL_LOCK:
        return run([binary, "-c", conf] + list(args), timeout)


def write_conf(path, role, o):
    """One daemon's configuration (libconfig). o holds: work, state, sock,
    amqp_port, user, server_user, client_user, url, client_id, src_dept,
    dst_dept, heartbeat, poll_interval, sync_interval, performers (remote ->
    local), max_inflight. The strings are the soak's own (no quotes)."""
    text = ["# written by bench/soak",
            'instance = "soak-%s";' % role,
            'state_dir = "%s";' % o["state"],
            'control_socket = "%s";' % o["sock"],
            'log_level = "info";',
            "amqp: {",
            '  uri = "amqp://%s@127.0.0.1:%d/%%2f";' % (o["user"], o["amqp_port"]),
            '  password_file = "%s/amqp.password";' % o["work"],
            "  heartbeat = %d;" % o["heartbeat"],
            '  queue_type = "classic";',
            "  connect_timeout = 5;",
            "};",
            "billmanager: {",
            '  url = "%s";' % o["url"],
            '  login = "remotetask";',
            '  password_file = "%s/billmgr.password";' % o["work"],
            "  timeout = 30;",
            "  max_inflight = %d;" % o["max_inflight"],
            "};"]
    if role == "client":
        perf = ", ".join("{ remote = %d; local = %d; }" % (r, l)
                         for r, l in sorted(o["performers"].items()))
        text += ["client: {",
                 '  id = "%s";' % o["client_id"],
                 "  poll_interval = %d;" % o["poll_interval"],
                 '  server_user = "%s";' % o["server_user"],
                 "  departments = ( { local = %d; remote = %d; } );" % (
                     o["src_dept"], o["dst_dept"]),
                 "  performers = ( %s );" % perf,
                 "};"]
    else:
        text += ["server: {",
                 "  sync_interval = %d;" % o["sync_interval"],
                 '  clients = ( { id = "%s"; amqp_user = "%s"; department = %d; } );' % (
                     o["client_id"], o["client_user"], o["dst_dept"]),
                 "};"]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(text) + "\n")
