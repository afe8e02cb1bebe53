"""launcher_test.py — what a user of pmpython (tools/pmpython.c) relies on, checked against
stock python3.11 wherever CPython defines the answer.

    PMPYTHON=path/to/pmpython /usr/bin/python3.11 launcher_test.py

- it is python3.11: arguments, exit status, standard library, sys.executable;
- CPython's own pymalloc serves nothing (sys.getallocatedblocks() counts its blocks);
- PYTHONMALLOC: every name runs a script; an unknown name fails exactly as in CPython;
  -E and -X dev follow CPython's rules; PYTHONMALLOCSTATS prints pymalloc-mt's statistics;
- the debug hooks catch what _testcapi's misbehaving helpers do (a buffer overflow, a block
  freed through the wrong domain, allocation without the GIL) and report it in CPython's
  words: stderr equal to stock python3.11's once addresses are normalised, SIGABRT;
- tracemalloc traces allocations made through pymalloc-mt;
- PMPYTHON_ALLOCATOR selects each peer allocator, and rejects an unknown one with status 2.
"""

import os
import re
import signal
import subprocess
import sys
import textwrap
import unittest

PMPYTHON = os.path.abspath(os.environ["PMPYTHON"])
STOCK = "/usr/bin/python3.11"

# Enough objects to need several arenas, and a checksum that proves they were all made.
WORKLOAD = (
    "import json, sys\n"
    "rows = [{'id': i, 'name': 'n%d' % i, 'tags': [i, str(i)]} for i in range(30000)]\n"
    "text = json.dumps(rows)\n"
    "back = json.loads(text)\n"
    "print(len(text), sum(r['id'] for r in back))\n"
)
WORKLOAD_OUTPUT = "%d %d\n"


def run(interpreter, args, **env):
    """(exit status, stdout, stderr) of `interpreter args` with env added (None removes)."""
    environment = dict(os.environ)
    for name in ("PYTHONMALLOC", "PYTHONMALLOCSTATS", "PYTHONDEVMODE", "PYTHONTRACEMALLOC",
                 "PMPYTHON_ALLOCATOR"):
        environment.pop(name, None)
    for name, value in env.items():
        if value is None:
            environment.pop(name, None)
        else:
            environment[name] = value
    done = subprocess.run([interpreter] + args, env=environment, capture_output=True,
                          text=True, timeout=120)
    return done.returncode, done.stdout, done.stderr


def normalise(report):
    """A fatal-error report without what differs from run to run: addresses."""
    return re.sub(r"0x[0-9a-f]+", "0x?", report)


class IsPython311(unittest.TestCase):
    def test_arguments_output_and_exit_status_are_pythons(self):
        args = ["-c", "import sys; print(sys.argv[1:], sys.version_info[:2]); sys.exit(7)",
                "a", "--b"]
        self.assertEqual(run(PMPYTHON, args), run(STOCK, args))
        status, out, _ = run(PMPYTHON, args)
        self.assertEqual((status, out), (7, "['a', '--b'] (3, 11)\n"))

    def test_same_standard_library_and_sys_executable_is_the_launcher(self):
        code = "import sys, json; print(sys.prefix, json.__file__)"
        self.assertEqual(run(PMPYTHON, ["-c", code])[1], run(STOCK, ["-c", code])[1])
        status, out, _ = run(PMPYTHON, ["-c", "import sys; print(sys.executable)"])
        self.assertEqual((status, os.path.realpath(out.strip())), (0, os.path.realpath(PMPYTHON)))

    def test_uncaught_exception_exits_1_with_the_traceback(self):
        status, _, err = run(PMPYTHON, ["-c", "raise KeyError('x')"])
        self.assertEqual(status, 1)
        self.assertIn("KeyError: 'x'", err)

    def test_workload_output_is_pythons(self):
        expected = run(STOCK, ["-c", WORKLOAD])
        self.assertEqual(expected[0], 0)
        self.assertEqual(run(PMPYTHON, ["-c", WORKLOAD]), expected)


class CPythonsPymallocServesNothing(unittest.TestCase):
    # sys.getallocatedblocks() counts the blocks of CPython's own pymalloc: thousands under
    # stock python3.11, none when every domain is served by another allocator.
    CODE = "import sys; x = [str(i) for i in range(10000)]; print(sys.getallocatedblocks())"

    def test_stock_counts_blocks(self):
        status, out, _ = run(STOCK, ["-c", self.CODE])
        self.assertEqual(status, 0)
        self.assertGreater(int(out), 10000)

    def test_every_pymalloc_mt_configuration_and_peer_leaves_it_empty(self):
        for env in ({}, {"PYTHONMALLOC": "debug"}, {"PYTHONMALLOC": "malloc"},
                    {"PYTHONMALLOC": "malloc_debug"}, {"PMPYTHON_ALLOCATOR": "malloc"},
                    {"PMPYTHON_ALLOCATOR": "mimalloc"}, {"PMPYTHON_ALLOCATOR": "jemalloc"}):
            with self.subTest(**env):
                self.assertEqual(run(PMPYTHON, ["-c", self.CODE], **env), (0, "0\n", ""))

    def test_stock_setting_is_cpythons_own_pymalloc(self):
        status, out, _ = run(PMPYTHON, ["-c", self.CODE], PMPYTHON_ALLOCATOR="stock")
        self.assertEqual(status, 0)
        self.assertGreater(int(out), 10000)


class Pythonmalloc(unittest.TestCase):
    def test_every_name_runs_a_script(self):
        expected = run(STOCK, ["-c", WORKLOAD])
        for name in ("", "default", "pymalloc", "malloc", "debug", "pymalloc_debug",
                     "malloc_debug"):
            with self.subTest(PYTHONMALLOC=name):
                self.assertEqual(run(PMPYTHON, ["-c", WORKLOAD], PYTHONMALLOC=name), expected)

    def test_unknown_name_fails_as_cpython_does(self):
        stock = run(STOCK, ["-c", "print('ran')"], PYTHONMALLOC="bogus")
        self.assertEqual(stock[0], 1)
        self.assertIn("PYTHONMALLOC: unknown allocator", stock[2])
        self.assertEqual(run(PMPYTHON, ["-c", "print('ran')"], PYTHONMALLOC="bogus"), stock)

    def test_children_see_pythonmalloc(self):
        code = ("import os, subprocess, sys; print(os.environ['PYTHONMALLOC'], flush=True); "
                "subprocess.run([sys.executable, '-c', "
                "'import os, sys; print(os.environ[\"PYTHONMALLOC\"], sys.getallocatedblocks())'])")
        self.assertEqual(run(PMPYTHON, ["-c", code], PYTHONMALLOC="malloc_debug"),
                         (0, "malloc_debug\nmalloc_debug 0\n", ""))

    def test_mallocstats_prints_pymalloc_mt_statistics_at_exit(self):
        status, out, err = run(PMPYTHON, ["-c", "print('done')"], PYTHONMALLOCSTATS="1")
        self.assertEqual((status, out), (0, "done\n"))
        # CPython's layout, and the sections only pymalloc-mt prints.
        last = err[err.rindex("Small block threshold = 512, in 32 size classes."):]
        for line in ("# arenas allocated total", "# bytes in allocated blocks",
                     "# arenas in reserve", "# bytes arena reserve limit"):
            self.assertIn(line, last)

    def test_mallocstats_ignored_under_E_as_cpython_ignores_it(self):
        self.assertEqual(run(PMPYTHON, ["-E", "-c", "pass"], PYTHONMALLOCSTATS="1"), (0, "", ""))


class DebugHooksReportLikeCPython(unittest.TestCase):
    """_testcapi ships with Debian's libpython3.11-stdlib; its helpers misuse the API."""

    def check_same_report(self, helper, expected_line, *args, **env):
        code = "import _testcapi; _testcapi.%s()" % helper
        stock = run(STOCK, list(args) + ["-c", code], **env)
        ours = run(PMPYTHON, list(args) + ["-c", code], **env)
        self.assertEqual(stock[0], -signal.SIGABRT, stock[2])
        self.assertIn(expected_line, stock[2])
        self.assertEqual(ours[0], -signal.SIGABRT, ours[2])
        self.assertEqual(normalise(ours[2]), normalise(stock[2]))

    def test_buffer_overflow_under_each_debug_name(self):
        for name in ("debug", "pymalloc_debug", "malloc_debug"):
            with self.subTest(PYTHONMALLOC=name):
                self.check_same_report(
                    "pymem_buffer_overflow",
                    "Fatal Python error: _PyMem_DebugRawFree: bad trailing pad byte",
                    PYTHONMALLOC=name)

    def test_buffer_overflow_under_dev_mode(self):
        self.check_same_report("pymem_buffer_overflow", "bad trailing pad byte", "-X", "dev")

    def test_free_through_the_wrong_domain(self):
        self.check_same_report(
            "pymem_api_misuse",
            "_PyMem_DebugRawFree: bad ID: Allocated using API 'm', verified using API 'r'",
            PYTHONMALLOC="debug")

    def test_allocation_without_the_gil(self):
        for helper, func in (("pymem_malloc_without_gil", "_PyMem_DebugMalloc"),
                             ("pyobject_malloc_without_gil", "_PyMem_DebugMalloc")):
            with self.subTest(helper=helper):
                self.check_same_report(
                    helper, "Fatal Python error: %s: Python memory allocator called without "
                    "holding the GIL" % func, PYTHONMALLOC="debug")

    def test_E_ignores_pythonmalloc_as_cpython_does(self):
        # No hooks, so nothing checks the GIL: the script ends normally, as in CPython.
        # (Only one thread exists, so the unguarded allocation itself is harmless.)
        code = "import _testcapi; _testcapi.pymem_malloc_without_gil(); print('unseen')"
        stock = run(STOCK, ["-E", "-c", code], PYTHONMALLOC="debug")
        self.assertEqual(stock, (0, "unseen\n", ""))
        self.assertEqual(run(PMPYTHON, ["-E", "-c", code], PYTHONMALLOC="debug"), stock)


class Tracemalloc(unittest.TestCase):
    CODE = (
        "import tracemalloc\n"
        "tracemalloc.start(5)\n"
        "kept = [bytearray(1000) for _ in range(2000)]  # the line to find\n"
        "snapshot = tracemalloc.take_snapshot()\n"
        "current, peak = tracemalloc.get_traced_memory()\n"
        "top = snapshot.statistics('lineno')[0]\n"
        "print(current >= 2000 * 1000, peak >= current, top.traceback[0].lineno, top.count >= 2000)\n"
        "del kept\n"
        "print(tracemalloc.get_traced_memory()[0] < 1000 * 1000)\n"
        "tracemalloc.stop()\n"
        "print(tracemalloc.get_traced_memory())\n"
    )
    EXPECTED = "True True 3 True\nTrue\n(0, 0)\n"

    def test_traces_through_pymalloc_mt(self):
        for env in ({}, {"PYTHONMALLOC": "debug"}, {"PYTHONMALLOC": "malloc"}):
            with self.subTest(**env):
                self.assertEqual(run(PMPYTHON, ["-c", self.CODE], **env), (0, self.EXPECTED, ""))

    def test_X_tracemalloc_from_the_start(self):
        code = "import tracemalloc; print(tracemalloc.is_tracing(), tracemalloc.get_traced_memory()[0] > 0)"
        self.assertEqual(run(PMPYTHON, ["-X", "tracemalloc", "-c", code]), (0, "True True\n", ""))


class PeerAllocators(unittest.TestCase):
    def test_each_peer_runs_the_workload_on_its_library(self):
        code = WORKLOAD + "print('libmimalloc' in open('/proc/self/maps').read(), " \
                          "'libjemalloc' in open('/proc/self/maps').read())\n"
        expected = run(STOCK, ["-c", WORKLOAD])[1]
        for allocator, maps in (("stock", "False False"), ("malloc", "False False"),
                                ("mimalloc", "True False"), ("jemalloc", "False True"),
                                ("pymalloc-mt", "False False")):
            with self.subTest(PMPYTHON_ALLOCATOR=allocator):
                self.assertEqual(run(PMPYTHON, ["-c", code], PMPYTHON_ALLOCATOR=allocator),
                                 (0, expected + maps + "\n", ""))

    def test_debug_hooks_over_a_peer(self):
        status, _, err = run(PMPYTHON, ["-c", "import _testcapi; _testcapi.pymem_buffer_overflow()"],
                             PMPYTHON_ALLOCATOR="mimalloc", PYTHONMALLOC="debug")
        self.assertEqual(status, -signal.SIGABRT)
        self.assertIn("_PyMem_DebugRawFree: bad trailing pad byte", err)

    def test_unknown_value_exits_2_before_python_runs(self):
        status, out, err = run(PMPYTHON, ["-c", "print('ran')"], PMPYTHON_ALLOCATOR="tcmalloc")
        self.assertEqual((status, out), (2, ""))
        self.assertEqual(err, "pmpython: PMPYTHON_ALLOCATOR=tcmalloc: unknown allocator "
                              "(known: pymalloc-mt pymalloc-mt-cached pymalloc-mt-free stock malloc "
                              "mimalloc jemalloc)\n")


class ThreadCachesAndFreeThreadedMode(unittest.TestCase):
    """pymalloc-mt's per-thread caches under CPython: threads allocate, hand objects to each
    other through a queue (so blocks are freed by threads that do not own their pools), and
    exit; the output is stock python3.11's, with and without the debug hooks, and the
    statistics at exit show the caches at work."""

    CODE = textwrap.dedent("""
        import json, queue, threading
        q = queue.Queue()
        def produce():
            for i in range(20000):
                q.put({"k": [i, str(i) * 3, (i, i + 1)]})
            q.put(None)
        def consume(out):
            total = 0
            while (item := q.get()) is not None:
                total += len(json.dumps(item))
            out.append(total)
        result = []
        threads = [threading.Thread(target=produce), threading.Thread(target=consume, args=(result,))]
        threads += [threading.Thread(target=lambda k=k: sum(len({i: [str(i)] * (i % 7) for i in range(20000)}) for _ in range(2)))
                    for k in range(4)]
        for t in threads: t.start()
        for t in threads: t.join()
        print(result[0])
    """)

    def test_threaded_workload_matches_stock(self):
        expected = run(STOCK, ["-c", self.CODE])
        self.assertEqual(expected[0], 0, expected[2])
        for allocator in ("pymalloc-mt-cached", "pymalloc-mt-free"):
            for malloc in ("", "debug"):
                with self.subTest(PMPYTHON_ALLOCATOR=allocator, PYTHONMALLOC=malloc):
                    self.assertEqual(run(PMPYTHON, ["-c", self.CODE], PMPYTHON_ALLOCATOR=allocator,
                                         PYTHONMALLOC=malloc), expected)

    def test_statistics_show_the_caches(self):
        status, _, err = run(PMPYTHON, ["-c", self.CODE], PMPYTHON_ALLOCATOR="pymalloc-mt-free",
                             PYTHONMALLOCSTATS="1")
        self.assertEqual(status, 0, err)
        self.assertIn("thread caches (free-threaded)", err)
        remote = re.search(r"# remote frees sent\s*=\s*([\d,]+)", err)
        self.assertIsNotNone(remote)
        self.assertGreater(int(remote.group(1).replace(",", "")), 0)


if __name__ == "__main__":
    unittest.main()
