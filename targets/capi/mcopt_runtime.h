/*
 * mcopt_runtime.h: run a model compiled by mcopt from C or C++, without Python.
 *
 * `mcopt.optimize(model, target="cpu").save("out/")` writes out/model.so (the compiled library:
 * a TVM Relax VM executable) and out/model.io.txt (the names, dtypes and shapes of the model's
 * inputs and outputs). This API loads the pair and runs it on plain host buffers:
 *
 *     char err[512];
 *     mcopt_model* m = mcopt_load("out/model.so", err, sizeof err);
 *     if (!m) { fprintf(stderr, "%s\n", err); return 1; }
 *     const mcopt_tensor_info* in = mcopt_input(m, 0);    // name, dtype, shape, nbytes
 *     const mcopt_tensor_info* out = mcopt_output(m, 0);
 *     float* x = malloc(in->nbytes);  float* y = malloc(out->nbytes);
 *     ... fill x ...
 *     const void* ins[] = {x};  void* outs[] = {y};
 *     if (mcopt_run(m, ins, 1, outs, 1, err, sizeof err) != 0) fprintf(stderr, "%s\n", err);
 *     mcopt_free(m);
 *
 * Buffers are dense, row-major (C order), of exactly `nbytes` bytes each; mcopt_run copies the
 * inputs in and the outputs out, so they may be anywhere (no alignment needed) and are never kept.
 *
 * Errors: every function that can fail returns NULL / nonzero and writes one line (no newline)
 * into `err` (truncated to `errlen` bytes, always NUL-terminated; `err` may be NULL). Nothing
 * aborts the process: TVM errors come back as their message.
 *
 * Threads: the generated code runs on TVM's thread pool of TVM_NUM_THREADS threads; when neither
 * TVM_NUM_THREADS nor OMP_NUM_THREADS is set, mcopt_load sets TVM_NUM_THREADS to the physical
 * cores this process may run on (as mcopt's Python side does; TVM's own default is half the
 * logical CPUs). One mcopt_model must not run from two threads at once: load one per thread (they
 * share the library's code, not their buffers).
 *
 * Loading prints TVM's "Warning: Scope Loaded:" lines on stderr (TVM's log, not an error).
 *
 * Implemented in mcopt_runtime.c (C11; compile it as C, this header also works from C++) over the
 * tvm-ffi C ABI (tvm/ffi/c_api.h); link with libtvm_ffi.so and libtvm_runtime.so, the latter with
 * -Wl,--no-as-needed (`mcopt capi DIR` prints the command for this machine).
 */
#ifndef MCOPT_RUNTIME_H_
#define MCOPT_RUNTIME_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*! \brief A loaded model: its library, a VM, and its input buffers. Opaque. */
typedef struct mcopt_model mcopt_model;

/*! \brief One input or output of a model (owned by the model; valid until mcopt_free). */
typedef struct {
  const char* name;      /*!< the ONNX name */
  const char* dtype;     /*!< "float32", "int8", "uint8", "int32", "int64", ... */
  int ndim;              /*!< number of dimensions (0: a scalar) */
  const int64_t* shape;  /*!< ndim sizes */
  size_t nbytes;         /*!< bytes of one dense buffer of this shape and dtype */
} mcopt_tensor_info;

/*!
 * \brief Load a compiled model: `so_path` (model.so) and its I/O description, the file beside it
 *  with `.so` replaced by `.io.txt` (model.io.txt). Runs the model on zeros (once, or twice for
 *  the allocation-free entry) to check its outputs against that description.
 * \return the model, or NULL with a one-line message in `err`.
 */
mcopt_model* mcopt_load(const char* so_path, char* err, size_t errlen);

/*! \brief mcopt_load with the I/O description at `io_path` (NULL: beside `so_path`). */
mcopt_model* mcopt_load_with_io(const char* so_path, const char* io_path, char* err,
                                size_t errlen);

/*! \brief Number of inputs / outputs (0 for NULL). */
int mcopt_num_inputs(const mcopt_model* model);
int mcopt_num_outputs(const mcopt_model* model);

/*! \brief Input / output `i` (in the model's order), or NULL when out of range. */
const mcopt_tensor_info* mcopt_input(const mcopt_model* model, int i);
const mcopt_tensor_info* mcopt_output(const mcopt_model* model, int i);

/*!
 * \brief 1 when calls go to the allocation-free entry (`main_bound`: every buffer allocated once
 *  at load), 0 when each call runs `main` (which allocates from TVM's pooled allocator).
 */
int mcopt_allocation_free(const mcopt_model* model);

/*!
 * \brief Run the model: copy `inputs[i]` (mcopt_input(model, i)->nbytes bytes each) in, run,
 *  and copy each output into `outputs[i]` (mcopt_output(model, i)->nbytes bytes each).
 * \param num_inputs must equal mcopt_num_inputs(model); num_outputs mcopt_num_outputs(model).
 * \param outputs may be NULL: run without copying the outputs out.
 * \return 0 on success, nonzero with a one-line message in `err`.
 */
int mcopt_run(mcopt_model* model, const void* const* inputs, int num_inputs,
              void* const* outputs, int num_outputs, char* err, size_t errlen);

/*! \brief Release a model (NULL is fine). */
void mcopt_free(mcopt_model* model);

#ifdef __cplusplus
}  /* extern "C" */
#endif

#endif /* MCOPT_RUNTIME_H_ */
