"""Counts test cases across meson test logs (cmocka and pytest output inside) plus extra
result lines, and prints the totals as one line: "N passed, N failed"."""
import json
import re
import sys


def count_one(t):
    out = (t.get("stdout") or "") + "\n" + (t.get("stderr") or "")
    ok = t.get("result") == "OK"
    skipped = t.get("result") == "SKIP"
    passed = failed = 0
    m = re.findall(r"\[==========\] (\d+) test\(s\) run", out)
    if m:  # cmocka: N run, of which the FAILED count failed
        f = re.findall(r"\[  FAILED  \] (\d+) test", out)
        failed = int(f[-1]) if f else 0
        passed = int(m[-1]) - failed
    else:
        tail = (t.get("stdout") or "").strip().splitlines()[-1:] or [""]
        p = re.search(r"(\d+) passed", tail[0])
        f = re.search(r"(\d+) failed", tail[0])
        e = re.search(r"(\d+) error", tail[0])
        passed = int(p.group(1)) if p else 0
        failed = (int(f.group(1)) if f else 0) + (int(e.group(1)) if e else 0)
    if skipped:
        return 0, 0, 1
    if not ok and failed == 0:
        failed = 1  # crashed, timed out or failed before reporting
    if ok and passed == 0 and failed == 0:
        passed = 1
    return passed, failed, 0


def main(paths):
    tp = tf = ts = 0
    for path in paths:
        if path.endswith(".json"):
            with open(path) as f:
                for line in f:
                    if line.strip():
                        p, fl, s = count_one(json.loads(line))
                        tp, tf, ts = tp + p, tf + fl, ts + s
        else:  # a file of "PASS name" / "FAIL name" lines (fuzz runs)
            with open(path) as f:
                for line in f:
                    if line.startswith("PASS"):
                        tp += 1
                    elif line.startswith("FAIL"):
                        tf += 1
    print("%d passed, %d failed%s" % (tp, tf, ", %d skipped" % ts if ts else ""))
    return 1 if tf else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
