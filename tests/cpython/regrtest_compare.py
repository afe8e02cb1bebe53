"""regrtest_compare.py — CPython's own regression tests, run by stock python3.11 and by
pmpython (python3.11 on pymalloc-mt), must end the same way, test case by test case.

Each interpreter runs `-m test --junit-xml` on the same test modules (the modules run in
worker processes started with sys.executable, so pmpython's workers are pmpython too).
Every test case's outcome (pass, fail, error, skip) is read from the XML, and the two
maps must be equal: same cases, same outcomes. A test case that fails under stock Debian
too is fine as long as it fails under pmpython as well; a difference is reported with
the case's name and both outcomes, and makes the exit status 1.

    regrtest_compare.py --launcher PMPYTHON [--reference /usr/bin/python3.11]
                        [--jobs N] [--env NAME=VALUE]... [--known-difference CASE]...
                        [TEST_MODULE...]          (none: every module regrtest knows)

--env applies to both interpreters (e.g. PYTHONMALLOC=debug: CPython's hooks against
pymalloc-mt's). --known-difference names a case whose outcome may differ, with the reason
documented where it is passed (tools/cpython_regrtest.sh); it is still printed.
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ElementTree

OUTCOMES = ("pass", "fail", "error", "skip")


def case_outcomes(junit_path):
    """{ "module.Class.test": outcome } from a regrtest --junit-xml file."""
    outcomes = {}
    for case in ElementTree.parse(junit_path).iter("testcase"):
        # regrtest puts the whole id in name ("test.test_sys.SysModuleTest.test_x"); a
        # classname, when present, comes first.
        name = ".".join(part for part in (case.get("classname"), case.get("name")) if part)
        if case.find("failure") is not None:
            outcome = "fail"
        elif case.find("error") is not None:
            outcome = "error"
        elif case.find("skipped") is not None:
            outcome = "skip"
        else:
            outcome = "pass"
        outcomes[name] = outcome
    return outcomes


def run_regrtest(label, interpreter, modules, jobs, extra_env, workdir):
    junit = os.path.join(workdir, label + ".xml")
    log = os.path.join(workdir, label + ".log")
    command = [interpreter, "-m", "test", "--junit-xml", junit, "-j", str(jobs),
               "--timeout", "900"] + modules
    env = dict(os.environ, **extra_env)
    if "TEST_TMPDIR" in os.environ:  # under bazel test: keep regrtest's scratch inside it
        env["TMPDIR"] = os.environ["TEST_TMPDIR"]
    start = time.monotonic()
    with open(log, "w") as out:
        status = subprocess.call(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                 cwd=workdir)
    seconds = time.monotonic() - start
    if not os.path.exists(junit):
        sys.stdout.write(open(log).read()[-4000:])
        raise SystemExit("%s: regrtest wrote no %s (exit status %d)" % (label, junit, status))
    return case_outcomes(junit), status, seconds, log


def tally(outcomes):
    counts = dict.fromkeys(OUTCOMES, 0)
    for outcome in outcomes.values():
        counts[outcome] += 1
    return " ".join("%s=%d" % (o, counts[o]) for o in OUTCOMES)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--launcher", required=True)
    parser.add_argument("--reference", default="/usr/bin/python3.11")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE")
    parser.add_argument("--known-difference", action="append", default=[], metavar="CASE")
    parser.add_argument("modules", nargs="*")
    args = parser.parse_args()

    extra_env = {}
    for item in args.env:
        name, sep, value = item.partition("=")
        if not sep:
            parser.error("--env wants NAME=VALUE, got %r" % item)
        extra_env[name] = value
    launcher = os.path.abspath(args.launcher)

    # Under bazel test the logs and XML land in the test's undeclared outputs (outputs.zip).
    workdir = os.environ.get("TEST_UNDECLARED_OUTPUTS_DIR") or tempfile.mkdtemp(
        prefix="regrtest_compare_")
    print("modules: %s" % (" ".join(args.modules) or "all"))
    if extra_env:
        print("environment: %s" % " ".join("%s=%s" % kv for kv in sorted(extra_env.items())))
    results = {}
    for label, interpreter in (("stock", args.reference), ("pmpython", launcher)):
        outcomes, status, seconds, log = run_regrtest(label, interpreter, args.modules,
                                                      args.jobs, extra_env, workdir)
        results[label] = outcomes
        print("%-8s %-32s %s  (regrtest status %d, %.1f s, log %s)"
              % (label, os.path.basename(interpreter), tally(outcomes), status, seconds, log))
        sys.stdout.flush()

    stock, ours = results["stock"], results["pmpython"]
    if not ours or all(o == "skip" for o in ours.values()):
        raise SystemExit("pmpython ran no test case: nothing was compared")
    differences = []
    for case in sorted(set(stock) | set(ours)):
        before, after = stock.get(case, "absent"), ours.get(case, "absent")
        if before != after:
            differences.append((case, before, after))
    unexpected = 0
    for case, before, after in differences:
        known = case in args.known_difference
        unexpected += not known
        print("%s %s: stock %s, pmpython %s" % ("known difference" if known else "DIFFERENT",
                                                case, before, after))
    if unexpected:
        print("FAIL: %d test case(s) end differently under pmpython" % unexpected)
        return 1
    print("OK: %d test cases, the same outcome under both" % len(stock))
    return 0


if __name__ == "__main__":
    sys.exit(main())
