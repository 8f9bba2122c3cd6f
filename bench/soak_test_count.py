#!/usr/bin/env python3
"""soak_test_count.py - tests of bench/soak_count.py, the soak's counting
rules: that they read notes as common/notes.c does (the cases of
tests/unit/test_notes.c) and that each figure moves when it must.

  python3 bench/soak_test_count.py      (or: python3 -m unittest bench/soak_test_count.py)
"""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import soak_count as sc  # noqa: E402

CLIENT = "soak"
BLOCK_END = "--- remotetask: end ---"


def forward_note(src_id, text):
    """A target note as the forward applier writes it."""
    return "--- remotetask: from client %s, task %d ---\n%s\n%s" % (CLIENT, src_id, text, BLOCK_END)


def task(tid, name="t", note="", status=0, performer=None, deadline="", type_="soak"):
    return {"id": tid, "name": name, "note": note, "status": status, "performer": performer,
            "deadline": deadline, "type": type_}


class Notes(unittest.TestCase):
    def test_native_as_notes_c(self):
        n1 = ("Customer asks for a reboot.\n\n--- remotetask: from client 7, task 1234 ---\n"
              "Rebooted.\n" + BLOCK_END)
        self.assertEqual(sc.native(n1), "Customer asks for a reboot.")
        self.assertEqual(sc.native(n1 + "\nThanks, works now & = + %"),
                         "Customer asks for a reboot.\nThanks, works now & = + %")
        self.assertEqual(sc.native(None), "")
        self.assertEqual(sc.native("line 1\nline 2\n"), "line 1\nline 2\n")
        self.assertEqual(sc.native("--- remotetask: from x ---\nabc\n" + BLOCK_END + "\nmine"),
                         "\nmine")
        self.assertEqual(sc.native("mine\n\n--- remotetask: from x ---\nabc\nno end"), "mine")
        self.assertEqual(sc.native("a\r\n\r\n--- remotetask: from x ---\r\nb\r\n"
                                   "--- remotetask: end ---\r\nc"), "a\r\n\r\nc")

    def test_origin_exact(self):
        note = "mine\n\n" + forward_note(1234, "text")
        self.assertEqual(sc.note_origin(note, CLIENT), 1234)
        self.assertEqual(sc.note_origin(note, "soa"), 0)
        # The prefix alone, without a real header line, is no origin.
        fake = "--- remotetask: from client soak, task 12 --- x"
        self.assertEqual(sc.note_origin(fake, CLIENT), 0)
        self.assertEqual(sc.note_origin("", CLIENT), 0)


class Forward(unittest.TestCase):
    def setUp(self):
        reverse_block = "--- remotetask: from the remote side ---\ntheirs\n" + BLOCK_END
        self.src = [task(1, "a", "one"), task(2, "b", "two\n\n" + reverse_block)]

    def test_all_applied(self):
        dst = [task(10, "a", forward_note(1, "one")),
               task(11, "b", forward_note(2, "two") + "\ntheirs")]
        c = sc.count_forward(CLIENT, self.src, dst)
        self.assertEqual((c["sent"], c["applied"], c["lost"], c["duplicated"], c["stale"],
                          c["foreign"]), (2, 2, 0, 0, 0, 0))

    def test_lost_duplicated_stale_foreign(self):
        dst = [task(10, "a", forward_note(1, "one")), task(11, "a", forward_note(1, "one")),
               task(12, "x", "no origin")]
        c = sc.count_forward(CLIENT, self.src, dst)
        self.assertEqual((c["applied"], c["lost"], c["duplicated"], c["foreign"]), (1, 1, 1, 1))
        self.assertEqual(c["first_lost"], 2)
        dst = [task(10, "a", forward_note(1, "one"), status=1),
               task(11, "b", forward_note(2, "two"))]
        c = sc.count_forward(CLIENT, self.src, dst)
        self.assertEqual(c["stale"], 1)
        self.assertIn("status", c["first_stale"])
        dst = [task(10, "a", forward_note(1, "on")), task(11, "b", forward_note(2, "two"))]
        self.assertEqual(sc.count_forward(CLIENT, self.src, dst)["stale"], 1)

    def test_note_lines_once(self):
        src = [task(1, "a", "one\nsoak line 1")]
        dst = [task(10, "a", forward_note(1, "one") + "\n\n" + forward_note(1, "soak line 1"))]
        c = sc.count_forward(CLIENT, src, dst, {1: ["soak line 1"]})
        self.assertEqual((c["note_lines"], c["note_lines_missing"], c["note_lines_duplicated"]),
                         (1, 0, 0))
        dst[0]["note"] += "\n\n" + forward_note(1, "soak line 1")
        c = sc.count_forward(CLIENT, src, dst, {1: ["soak line 1"]})
        self.assertEqual(c["note_lines_duplicated"], 1)
        dst = [task(10, "a", forward_note(1, "one"))]
        c = sc.count_forward(CLIENT, src, dst, {1: ["soak line 1"]})
        self.assertEqual(c["note_lines_missing"], 1)


class Reverse(unittest.TestCase):
    PERF = {21: 1, 22: 2}

    def changes(self):
        return [{"src": 1, "dst": 10, "line": "soak reverse change 1"},
                {"src": 1, "dst": 10, "line": "soak reverse change 2"}]

    def test_applied_once(self):
        lines = "soak reverse change 1\nsoak reverse change 2"
        dst = {10: task(10, note=forward_note(1, "x") + "\n" + lines, status=2, performer=21)}
        src = {1: task(1, note="x\n\n--- remotetask: from the remote side ---\n" + lines + "\n" +
                       BLOCK_END, status=2, performer=1)}
        c = sc.count_reverse(self.changes(), src, dst, self.PERF)
        self.assertEqual((c["changes"], c["applied"], c["lost"], c["duplicated"], c["stale"],
                          c["target_lost"]), (2, 2, 0, 0, 0, 0))

    def test_lost_duplicated_stale(self):
        dst = {10: task(10, note="soak reverse change 1\nsoak reverse change 2", status=1)}
        src = {1: task(1, note="soak reverse change 1\nsoak reverse change 1", status=2,
                       performer=1)}
        c = sc.count_reverse(self.changes(), src, dst, self.PERF)
        self.assertEqual((c["applied"], c["lost"], c["duplicated"], c["stale"]), (1, 1, 1, 1))
        # A line gone from the target itself is counted apart as well.
        dst[10]["note"] = "soak reverse change 1"
        self.assertEqual(sc.count_reverse(self.changes(), src, dst, self.PERF)["target_lost"], 1)

    def test_performer_mapped_and_none(self):
        ch = self.changes()[:1]
        src = {1: task(1, note="soak reverse change 1", status=1, performer=2)}
        dst = {10: task(10, note="soak reverse change 1", status=1, performer=22)}
        self.assertEqual(sc.count_reverse(ch, src, dst, self.PERF)["stale"], 0)
        dst[10]["performer"] = None
        self.assertEqual(sc.count_reverse(ch, src, dst, self.PERF)["stale"], 1)
        src[1]["performer"] = None
        self.assertEqual(sc.count_reverse(ch, src, dst, self.PERF)["stale"], 0)


if __name__ == "__main__":
    unittest.main()
