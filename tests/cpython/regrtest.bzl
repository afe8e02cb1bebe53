"""regrtest_comparison: an sh_test that runs CPython's regression tests under stock
python3.11 and under //tools:pmpython and requires the same outcome per test case
(regrtest_compare.py). Tagged out of the sanitizer configs: libpython is not instrumented."""

def regrtest_comparison(name, modules, env = [], known_differences = []):
    native.sh_test(
        name = name,
        size = "large",
        timeout = "moderate",  # 120 s measured with two of these sharing 2 cores
        srcs = ["run_with_python311.sh"],
        args = [
            "tests/cpython/regrtest_compare.py",
            "$(location //tools:pmpython)",
            "--launcher=$(location //tools:pmpython)",
            "--jobs=2",
        ] + ["--env=" + e for e in env] +
               ["--known-difference=" + k for k in known_differences] + modules,
        data = [
            "regrtest_compare.py",
            "//tools:pmpython",
        ],
        tags = [
            "no_asan",
            "no_tsan",
        ],
    )
