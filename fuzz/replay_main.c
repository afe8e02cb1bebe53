/*
 * fuzz/replay_main.c — runs a fuzz target over a checked-in corpus, without libFuzzer.
 *
 * Linked into every `<target>_replay` cc_test (see fuzz/fuzz.bzl) in the plain gcc, TSan and
 * ASan builds, so the corpus — seeds, merged coverage inputs and regression crashers — is
 * replayed by `bazel test //...` through the very LLVMFuzzerTestOneInput that libFuzzer
 * calls. It mimics what libFuzzer does with a corpus: the empty input first, then every
 * file, each one in its own exactly-sized heap buffer so that ASan catches a target that
 * reads past the end of its input.
 *
 *   replay PATH...        each PATH is a file, or a directory whose regular files are run
 *                         in name order (not recursive; names starting with '.' skipped)
 *   PM_FUZZ_CORPUS=PATH   used when no argument is given
 *
 * Exit status 0 when every input ran (a failing input aborts inside the target, which is
 * the report), 1 for a usage or I/O problem, or when no input file was found at all: an
 * empty or misplaced corpus must not pass silently.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz/fuzz_target.h"

/* Reads the whole file into a fresh buffer of exactly its size. */
static int run_file(const char *path) {
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -1;
    }
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size < 0) {
        fprintf(stderr, "replay: %s: cannot stat\n", path);
        fclose(f);
        return -1;
    }
    size_t size = (size_t)st.st_size;
    uint8_t *data = malloc(size == 0 ? 1 : size);
    if (data == NULL || fread(data, 1, size, f) != size) {
        fprintf(stderr, "replay: %s: cannot read %zu bytes\n", path, size);
        free(data);
        fclose(f);
        return -1;
    }
    fclose(f);
    fprintf(stderr, "replay: %s (%zu bytes)\n", path, size);
    (void)LLVMFuzzerTestOneInput(data, size);
    free(data);
    return 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Runs every regular file of a directory in name order. Returns the number run, or -1. */
static long run_directory(const char *dir) {
    DIR *d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "replay: %s: %s\n", dir, strerror(errno));
        return -1;
    }
    char **names = NULL;
    size_t count = 0, capacity = 0;
    struct dirent *entry;
    while ((entry = readdir(d)) != NULL) {
        if (entry->d_name[0] == '.') continue;
        if (count == capacity) {
            capacity = capacity == 0 ? 64 : 2 * capacity;
            char **grown = realloc(names, capacity * sizeof *names);
            if (grown == NULL) abort();
            names = grown;
        }
        names[count] = strdup(entry->d_name);
        if (names[count] == NULL) abort();
        count++;
    }
    closedir(d);
    if (count > 0) qsort(names, count, sizeof *names, compare_names);
    long run = 0;
    for (size_t i = 0; i < count; i++) {
        size_t length = strlen(dir) + 1 + strlen(names[i]) + 1;
        char *path = malloc(length);
        if (path == NULL) abort();
        snprintf(path, length, "%s/%s", dir, names[i]);
        struct stat st;
        if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            if (run_file(path) != 0) run = -1;
            else if (run >= 0) run++;
        }
        free(path);
        free(names[i]);
    }
    free(names);
    return run;
}

int main(int argc, char **argv) {
    const char *from_env = getenv("PM_FUZZ_CORPUS");
    int npaths = argc > 1 ? argc - 1 : (from_env != NULL && from_env[0] != '\0' ? 1 : 0);
    if (npaths == 0) {
        fprintf(stderr, "usage: %s PATH... (or PM_FUZZ_CORPUS=PATH)\n", argv[0]);
        return 1;
    }
    (void)LLVMFuzzerTestOneInput((const uint8_t *)"", 0); /* libFuzzer starts with it too */
    long total = 0;
    for (int i = 0; i < npaths; i++) {
        const char *path = argc > 1 ? argv[i + 1] : from_env;
        struct stat st;
        if (stat(path, &st) != 0) {
            fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
            return 1;
        }
        long run = S_ISDIR(st.st_mode) ? run_directory(path) : (run_file(path) == 0 ? 1 : -1);
        if (run < 0) return 1;
        total += run;
    }
    if (total == 0) {
        fprintf(stderr, "replay: no input files found\n");
        return 1;
    }
    fprintf(stderr, "replay: %ld inputs passed\n", total);
    return 0;
}
