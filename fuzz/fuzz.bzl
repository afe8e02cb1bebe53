"""pm_fuzz_target: one libFuzzer binary and one corpus-replay test from the same harness.

For a target NAME with harness sources SRCS this declares:

  NAME_harness  cc_library (testonly, alwayslink) with the sources: defines
                LLVMFuzzerTestOneInput (fuzz/fuzz_target.h).
  NAME          the libFuzzer binary. Tagged manual and compatible only with --config=fuzz
                (which links libFuzzer's main through -fsanitize=fuzzer); built by
                `bazel build --config=fuzz //fuzz:all` through //fuzz:fuzzers.
  NAME_replay   cc_test that runs the harness over corpus/NAME/ with fuzz/replay_main.c.
                Incompatible with --config=fuzz (libFuzzer's main would clash with the
                replay main), so it runs in the plain, TSan and ASan builds only.

Why target_compatible_with and not only tags: a tag filter has to be given on every
command line, while compatibility follows the configuration, so `//...` and `//fuzz:all`
do the right thing in every config. Bazel 4.2.3's @platforms has no :incompatible, hence
the package's own never-satisfied constraint //fuzz:incompatible.
"""

FUZZ_ONLY = select({
    "//fuzz:fuzzing": [],
    "//conditions:default": ["//fuzz:incompatible"],
})

NOT_UNDER_FUZZ = select({
    "//fuzz:fuzzing": ["//fuzz:incompatible"],
    "//conditions:default": [],
})

def pm_fuzz_target(name, srcs, deps = [], replay_size = "small", replay_tags = []):
    native.cc_library(
        name = name + "_harness",
        testonly = True,
        srcs = srcs,
        alwayslink = True,
        linkstatic = True,  # like //alloc: linked statically into both users
        deps = deps + [":fuzz_target"],
    )

    native.cc_binary(
        name = name,
        testonly = True,
        tags = ["manual", "fuzz_target"],
        target_compatible_with = FUZZ_ONLY,
        # The fuzz config links with ld.bfd (-fuse-ld=bfd, see .bazelrc), which does not know
        # gold's --start-lib that Bazel passes for static libraries: link archives instead.
        features = ["-supports_start_end_lib"],
        deps = [":" + name + "_harness"],
    )

    native.cc_test(
        name = name + "_replay",
        size = replay_size,
        srcs = ["replay_main.c"],
        args = ["fuzz/corpus/" + name],
        data = native.glob(["corpus/" + name + "/**"]),
        tags = replay_tags,
        target_compatible_with = NOT_UNDER_FUZZ,
        deps = [
            ":" + name + "_harness",
            ":fuzz_target",
        ],
    )
