"""Before/after table of the reliability cases (not a test).

Run the suite against the original tree and the current one with
`--junitxml`, then:

  git archive 77b530c | tar -x -C /tmp/orig   # + the alignax/ symlinks; recsys/data -> framework/data
  cp -r tests/reliability tests/experiments/resume.py into /tmp/orig/tests/...
  (cd /tmp/orig && PYTHONPATH=. python -m pytest -q tests/reliability --junitxml=/tmp/before.xml)
  python -m pytest -q tests/reliability --junitxml=/tmp/after.xml
  python tests/reliability/before_after.py /tmp/before.xml /tmp/after.xml > tests/reliability/before_after.md

Each failure on the original is classified from its message (silent = no
error; unclear = a library error or a message that names no culprit).
"""
import sys, re, collections
import xml.etree.ElementTree as ET

def load(path):
  out = {}
  for tc in ET.parse(path).getroot().iter("testcase"):
    name = tc.get("classname").split(".")[-1] + "::" + tc.get("name")
    f = tc.find("failure")
    if f is None:
      f = tc.find("error")
    if tc.find("skipped") is not None:
      out[name] = ("skipped", "")
    elif f is None:
      out[name] = ("ok", "")
    else:
      out[name] = ("fail", (f.get("message") or "") + "\n" + (f.text or ""))
  return out

def classify(name, status, text):
  if status == "ok":
    return "clear / correct already"
  if status == "skipped":
    return "not run"
  msg = text
  if "DID NOT RAISE" in msg:
    return "silent (accepted)"
  m = re.search(r"^E\s+(\w+(?:\.\w+)*(?:Error|Exception|Interrupt)):", msg, re.M)
  first = msg.split("\n")[0]
  if "has no attribute" in first or "cannot import" in first:
    if "test_configs" in name:
      return "no check before work (runs on)"
    if "test_checkpoints" in name:
      return "no integrity check"
    if "test_data" in name:
      return "unclear: bare parse error without file/line"
    return "no check"
  if "test_objectives" in name and ("np.False_" in first or "Array(nan" in first):
    return "silent (NaN loss or gradient)"
  if "test_checkpoints" in name and re.search(r"ValueError: (DATA_LOSS|NOT_FOUND|OUT_OF_RANGE)", first):
    return "unclear: TensorStore dump, no fallback"
  if "assert 'None' == ''" in first:
    return "silent (null became 'None')"
  if first.startswith("AssertionError: ") and not first.startswith("AssertionError: assert"):
    return "unclear message (culprit not named)"
  if "test_checkpoints" in name and re.search(r"assert \(?\d == \d", first):
    return "silent (damaged checkpoint restored)"
  if "test_metrics" in name:
    if "JSONDecodeError" in msg:
      return "crash: bare JSONDecodeError"
    return "lost or duplicated rows"
  if m and not first.startswith("AssertionError"):
    return f"unclear: {m.group(1).split('.')[-1]}"
  if first.startswith("AssertionError") or "assert" in first:
    if re.search(r"(ValueError|TypeError|KeyError|FileNotFoundError)", first):
      return "unclear message"
    return "wrong behaviour"
  typ = first.split(":")[0].split(".")[-1]
  return f"unclear: {typ}"[:60]

before, after = load(sys.argv[1]), load(sys.argv[2])
rows = []
counts = collections.Counter()
for name in sorted(after):
  b = before.get(name)
  bc = classify(name, *b) if b else "n/a"
  ac = "clear / correct" if after[name][0] == "ok" else after[name][0]
  counts[bc.split(":")[0].split(" (")[0]] += 1
  rows.append(f"| `{name}` | {bc} | {ac} |")
print("| case | before (77b530c) | after |\n| --- | --- | --- |")
print("\n".join(rows))
print()
print(dict(counts), "total", len(after))
