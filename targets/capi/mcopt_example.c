/*
 * mcopt_example.c: run a saved mcopt model from C (an example of mcopt_runtime.h, and a tool).
 *
 *   mcopt_example MODEL.so                         print the inputs and outputs, run on zeros
 *   mcopt_example MODEL.so IN.bin... OUT.bin...    one raw file per input (read) and per output
 *                                                  (written): dense C-order data, nothing else
 *   mcopt_example MODEL.so --repeat N [files...]   also time N calls of mcopt_run (stderr)
 *
 * Build: `mcopt capi DIR` writes this file with mcopt_runtime.h/.c and prints the command.
 */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mcopt_runtime.h"

static int read_raw(const char* path, void* buf, size_t n) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) return fprintf(stderr, "mcopt_example: cannot open %s\n", path), -1;
  size_t got = fread(buf, 1, n, f);
  int extra = fgetc(f) != EOF;
  fclose(f);
  if (got != n || extra)
    return fprintf(stderr, "mcopt_example: %s: expected exactly %zu bytes\n", path, n), -1;
  return 0;
}

static int write_raw(const char* path, const void* buf, size_t n) {
  FILE* f = fopen(path, "wb");
  if (f == NULL || fwrite(buf, 1, n, f) != n || fclose(f) != 0)
    return fprintf(stderr, "mcopt_example: cannot write %s\n", path), -1;
  return 0;
}

static void describe(const char* kind, const mcopt_tensor_info* t) {
  printf("%s %s %s [", kind, t->name, t->dtype);
  for (int k = 0; k < t->ndim; ++k) printf(k ? ",%lld" : "%lld", (long long)t->shape[k]);
  printf("] %zu bytes\n", t->nbytes);
}

int main(int argc, char** argv) {
  char err[1024];
  long repeat = 0;
  const char* files[256];
  int nfiles = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s MODEL.so [--repeat N] [INPUT.bin... OUTPUT.bin...]\n", argv[0]);
    return 2;
  }
  for (int i = 2; i < argc; ++i) {
    if (strcmp(argv[i], "--repeat") == 0 && i + 1 < argc) repeat = atol(argv[++i]);
    else if (nfiles < 256) files[nfiles++] = argv[i];
  }
  mcopt_model* m = mcopt_load(argv[1], err, sizeof err);
  if (m == NULL) return fprintf(stderr, "mcopt_example: %s\n", err), 1;
  int nin = mcopt_num_inputs(m), nout = mcopt_num_outputs(m), rc = 1;
  if (nfiles != 0 && nfiles != nin + nout) {
    fprintf(stderr, "mcopt_example: the model has %d input(s) and %d output(s): give %d files\n",
            nin, nout, nin + nout);
    mcopt_free(m);
    return 2;
  }
  const void** ins = (const void**)calloc((size_t)nin, sizeof(void*));
  void** outs = (void**)calloc((size_t)nout, sizeof(void*));
  for (int i = 0; i < nin; ++i) {
    const mcopt_tensor_info* t = mcopt_input(m, i);
    void* buf = calloc(1, t->nbytes ? t->nbytes : 1);
    ins[i] = buf;
    if (nfiles == 0) describe("input", t);
    else if (read_raw(files[i], buf, t->nbytes) != 0) goto done;
  }
  for (int i = 0; i < nout; ++i) {
    const mcopt_tensor_info* t = mcopt_output(m, i);
    outs[i] = calloc(1, t->nbytes ? t->nbytes : 1);
    if (nfiles == 0) describe("output", t);
  }
  if (mcopt_run(m, ins, nin, outs, nout, err, sizeof err) != 0) {
    fprintf(stderr, "mcopt_example: %s\n", err);
    goto done;
  }
  for (int i = 0; nfiles != 0 && i < nout; ++i)
    if (write_raw(files[nin + i], outs[i], mcopt_output(m, i)->nbytes) != 0) goto done;
  if (repeat > 0) {
    /* each call timed on its own: the minimum is the call path without the host's noise */
    struct timespec t0, t1, c0, c1;
    double best = 1e300;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (long r = 0; r < repeat; ++r) {
      clock_gettime(CLOCK_MONOTONIC, &c0);
      if (mcopt_run(m, ins, nin, outs, nout, err, sizeof err) != 0) {
        fprintf(stderr, "mcopt_example: %s\n", err);
        goto done;
      }
      clock_gettime(CLOCK_MONOTONIC, &c1);
      double ns = (double)(c1.tv_sec - c0.tv_sec) * 1e9 + (double)(c1.tv_nsec - c0.tv_nsec);
      if (ns < best) best = ns;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    double us = ((double)(t1.tv_sec - t0.tv_sec) * 1e9 + (double)(t1.tv_nsec - t0.tv_nsec)) /
                (double)repeat / 1e3;
    fprintf(stderr, "mcopt_run: %.3f us per call, min %.3f us (%ld calls, allocation-free: %s)\n",
            us, best / 1e3, repeat, mcopt_allocation_free(m) ? "yes" : "no");
  }
  rc = 0;
done:
  for (int i = 0; i < nin; ++i) free((void*)ins[i]);
  for (int i = 0; i < nout; ++i) free(outs[i]);
  free(ins);
  free(outs);
  mcopt_free(m);
  return rc;
}
