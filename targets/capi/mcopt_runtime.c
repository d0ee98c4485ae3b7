/*
 * mcopt_runtime.c: the C API of mcopt_runtime.h over the tvm-ffi C ABI (tvm/ffi/c_api.h).
 *
 * What it does, in the terms of TVM 0.27's Python runtime (tvm.runtime.load_module +
 * relax.VirtualMachine + mcopt's PreparedRun):
 *
 *   lib = ffi.ModuleLoadFromFile("model.so")              # the exported Relax VM executable
 *   vm  = lib["vm_load_executable"]()
 *   vm["vm_initialization"](kDLCPU, 0, POOLED_ALLOCATOR)
 *   inputs = one 64-byte aligned tensor per input, allocated here (DLPack, freed by mcopt_free)
 *   if vm has "main_bound" and "main_bound_alloc":        # allocation-free entry (static_memory)
 *       args = inputs + vm["main_bound_alloc"]()
 *       vm["main_bound"](*args) twice: the outputs stay in the same buffers ->
 *       vm["set_input"]("main_bound", *args); per call: vm["invoke_stateful"]("main_bound")
 *   else: per call vm["main"](*inputs) -> a tensor or a tuple of tensors
 *
 * Only the C ABI is used (no C++ headers): any C11 compiler builds it (C11 for the anonymous unions
 * of c_api.h; clean under -std=c11 -Wall -Wextra -pedantic). Object handles returned by calls are
 * owned (released with TVMFFIObjectDecRef); arguments are borrowed views.
 */
#define _GNU_SOURCE /* posix_memalign, strdup, setenv; sched_getaffinity on Linux */

#include "mcopt_runtime.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tvm/ffi/c_api.h>
#ifdef __linux__
#include <sched.h>
#endif

#define MCOPT_ALIGN 64          /* TVM's kAllocAlignment: what generated code may assume */
#define MCOPT_MAX_NDIM 16
#define MCOPT_POOLED_ALLOCATOR 2 /* tvm.runtime.vm.VirtualMachine.POOLED_ALLOCATOR */

typedef struct {
  mcopt_tensor_info info; /* what the caller sees; name/dtype/shape point into the fields below */
  char* name;
  char dtype[32];
  int64_t shape[MCOPT_MAX_NDIM];
  DLDataType dl_dtype;
} io_spec;

struct mcopt_model {
  TVMFFIObjectHandle lib;         /* the loaded library module */
  TVMFFIObjectHandle vm;          /* the VM module (vm_load_executable) */
  TVMFFIObjectHandle f_main;      /* "main" (fallback path) */
  TVMFFIObjectHandle f_invoke;    /* "invoke_stateful" (allocation-free path) */
  int allocation_free;
  int n_in, n_out;
  io_spec* ins;
  io_spec* outs;
  TVMFFIObjectHandle* in_tensors; /* owned: our input tensors */
  void** in_data;                 /* their data */
  TVMFFIObjectHandle* bound_args; /* owned: main_bound_alloc's buffers (allocation-free path) */
  int n_bound_args;
  TVMFFIObjectHandle* out_tensors; /* owned: the output tensors (allocation-free path) */
  const void** out_data;           /* their data: fixed for the model's life */
};

/* ---- errors ---------------------------------------------------------------------------------- */

static void set_err(char* err, size_t errlen, const char* fmt, ...) {
  if (err == NULL || errlen == 0) return;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errlen, fmt, ap);
  va_end(ap);
  for (char* p = err; *p; ++p) /* one line */
    if (*p == '\n' || *p == '\r' || *p == '\t') *p = ' ';
}

/* The error TVM raised (TLS) as "<kind>: <message>", on one line; clears it. */
static void raised_err(char* err, size_t errlen, const char* what) {
  TVMFFIObjectHandle e = NULL;
  TVMFFIErrorMoveFromRaised(&e);
  if (e == NULL) {
    set_err(err, errlen, "%s: failed (TVM gave no message)", what);
    return;
  }
  const TVMFFIErrorCell* cell =
      (const TVMFFIErrorCell*)((const char*)e + sizeof(TVMFFIObject));
  int klen = (int)cell->kind.size, mlen = (int)cell->message.size;
  while (mlen > 0 && (cell->message.data[mlen - 1] == '\n' || cell->message.data[mlen - 1] == ' '))
    --mlen;
  set_err(err, errlen, "%s: %.*s: %.*s", what, klen, cell->kind.data, mlen, cell->message.data);
  TVMFFIObjectDecRef(e);
}

/* ---- tvm-ffi helpers --------------------------------------------------------------------------- */

static TVMFFIAny any_none(void) {
  TVMFFIAny a;
  memset(&a, 0, sizeof a);
  a.type_index = kTVMFFINone;
  return a;
}

static TVMFFIAny any_obj(TVMFFIObjectHandle h) {
  TVMFFIAny a = any_none();
  a.type_index = ((TVMFFIObject*)h)->type_index;
  a.v_obj = (TVMFFIObject*)h;
  return a;
}

static TVMFFIAny any_int(int64_t v) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIInt;
  a.v_int64 = v;
  return a;
}

static TVMFFIAny any_bool(int v) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIBool;
  a.v_int64 = v != 0;
  return a;
}

static TVMFFIAny any_str(const char* s) {
  TVMFFIAny a = any_none();
  a.type_index = kTVMFFIRawStr;
  a.v_c_str = s;
  return a;
}

static void any_release(TVMFFIAny* a) {
  if (a->type_index >= kTVMFFIStaticObjectBegin && a->v_obj != NULL) TVMFFIObjectDecRef(a->v_obj);
  *a = any_none();
}

static void release(TVMFFIObjectHandle* h) {
  if (*h != NULL) TVMFFIObjectDecRef(*h);
  *h = NULL;
}

/* Call f(args) into *ret (owned); 0 on success, else the TVM error in err. */
static int call(TVMFFIObjectHandle f, TVMFFIAny* args, int n, TVMFFIAny* ret, char* err,
                size_t errlen, const char* what) {
  *ret = any_none();
  if (TVMFFIFunctionCall(f, args, n, ret) != 0) {
    raised_err(err, errlen, what);
    *ret = any_none();
    return -1;
  }
  return 0;
}

/* A global function (owned), or NULL with a message. */
static TVMFFIObjectHandle global(const char* name, char* err, size_t errlen) {
  TVMFFIByteArray n = {name, strlen(name)};
  TVMFFIObjectHandle f = NULL;
  if (TVMFFIFunctionGetGlobal(&n, &f) != 0) {
    raised_err(err, errlen, name);
    return NULL;
  }
  if (f == NULL)
    set_err(err, errlen,
            "the TVM runtime has no global function %s: is libtvm_runtime.so linked in? (link "
            "with -Wl,--no-as-needed -ltvm_runtime)",
            name);
  return f;
}

/* module[name] (owned), or NULL: with a message in err when the lookup failed, and with err
 * untouched when the module simply has no such function (*missing set to 1). */
static TVMFFIObjectHandle module_function(TVMFFIObjectHandle mod, const char* name, int* missing,
                                          char* err, size_t errlen) {
  *missing = 0;
  TVMFFIObjectHandle get = global("ffi.ModuleGetFunction", err, errlen);
  if (get == NULL) return NULL;
  TVMFFIAny args[3] = {any_obj(mod), any_str(name), any_bool(0)};
  TVMFFIAny ret;
  int rc = call(get, args, 3, &ret, err, errlen, "ffi.ModuleGetFunction");
  release(&get);
  if (rc != 0) return NULL;
  if (ret.type_index == kTVMFFIFunction) return ret.v_obj;
  any_release(&ret);
  *missing = 1;
  return NULL;
}

/* Flatten a call's result (a tensor, or a possibly nested tuple of tensors) into owned tensor
 * handles out[0..*count) (at most cap; *count counts them all). Consumes *ret. */
static int flatten(TVMFFIAny* ret, TVMFFIObjectHandle* out, int cap, int* count, char* err,
                   size_t errlen) {
  int rc = 0;
  if (ret->type_index == kTVMFFITensor) {
    if (*count < cap) {
      out[*count] = ret->v_obj; /* ownership moves */
      *ret = any_none();
    }
    ++*count;
  } else if (ret->type_index == kTVMFFIArray) {
    TVMFFIObjectHandle size = global("ffi.ArraySize", err, errlen);
    TVMFFIObjectHandle item = size ? global("ffi.ArrayGetItem", err, errlen) : NULL;
    TVMFFIAny n = any_none();
    TVMFFIAny a[2] = {*ret, any_none()};
    if (item == NULL || call(size, a, 1, &n, err, errlen, "ffi.ArraySize") != 0) rc = -1;
    for (int64_t i = 0; rc == 0 && i < n.v_int64; ++i) {
      TVMFFIAny elem;
      a[1] = any_int(i);
      rc = call(item, a, 2, &elem, err, errlen, "ffi.ArrayGetItem");
      if (rc == 0) rc = flatten(&elem, out, cap, count, err, errlen);
    }
    release(&size);
    release(&item);
  } else {
    set_err(err, errlen, "the model returned a value of type index %d, not tensors",
            (int)ret->type_index);
    rc = -1;
  }
  any_release(ret);
  return rc;
}

static DLTensor* dltensor(TVMFFIObjectHandle t) {
  return (DLTensor*)((char*)t + sizeof(TVMFFIObject));
}

static const void* tensor_data(TVMFFIObjectHandle t) {
  DLTensor* d = dltensor(t);
  return (const char*)d->data + d->byte_offset;
}

/* ---- input tensors: 64-byte aligned host memory, owned by a DLManagedTensor ------------------- */

typedef struct {
  DLManagedTensor managed;
  int64_t shape[MCOPT_MAX_NDIM];
} host_tensor;

static void host_tensor_delete(DLManagedTensor* self) {
  free(self->dl_tensor.data);
  free(self);
}

static TVMFFIObjectHandle new_input(const io_spec* s, void** data, char* err, size_t errlen) {
  host_tensor* h = (host_tensor*)calloc(1, sizeof(host_tensor));
  void* mem = NULL;
  size_t bytes = (s->info.nbytes + MCOPT_ALIGN - 1) / MCOPT_ALIGN * MCOPT_ALIGN;
  if (h == NULL || posix_memalign(&mem, MCOPT_ALIGN, bytes ? bytes : MCOPT_ALIGN) != 0) {
    free(h);
    set_err(err, errlen, "out of memory allocating input %s (%zu bytes)", s->name,
            s->info.nbytes);
    return NULL;
  }
  memset(mem, 0, bytes ? bytes : MCOPT_ALIGN);
  memcpy(h->shape, s->shape, sizeof(int64_t) * (size_t)s->info.ndim);
  h->managed.dl_tensor.data = mem;
  h->managed.dl_tensor.device.device_type = kDLCPU;
  h->managed.dl_tensor.device.device_id = 0;
  h->managed.dl_tensor.ndim = s->info.ndim;
  h->managed.dl_tensor.dtype = s->dl_dtype;
  h->managed.dl_tensor.shape = h->shape;
  h->managed.dl_tensor.strides = NULL;
  h->managed.dl_tensor.byte_offset = 0;
  h->managed.manager_ctx = NULL;
  h->managed.deleter = host_tensor_delete;
  TVMFFIObjectHandle t = NULL;
  if (TVMFFITensorFromDLPack(&h->managed, MCOPT_ALIGN, 1, &t) != 0) {
    raised_err(err, errlen, "creating an input tensor");
    return NULL; /* not freed: the tensor may own it already */
  }
  *data = mem;
  return t;
}

/* ---- model.io.txt -------------------------------------------------------------------------- */

static char* read_file(const char* path, char* err, size_t errlen) {
  FILE* f = fopen(path, "rb");
  if (f == NULL) {
    set_err(err, errlen, "cannot open %s (the model's I/O description, written by save() beside "
            "model.so)", path);
    return NULL;
  }
  size_t cap = 4096, len = 0;
  char* buf = (char*)malloc(cap);
  size_t n;
  while (buf != NULL && (n = fread(buf + len, 1, cap - len - 1, f)) > 0) {
    len += n;
    if (cap - len - 1 == 0) {
      char* bigger = (char*)realloc(buf, cap * 2);
      if (bigger == NULL) free(buf);
      buf = bigger;
      cap *= 2;
    }
  }
  fclose(f);
  if (buf == NULL) {
    set_err(err, errlen, "out of memory reading %s", path);
    return NULL;
  }
  buf[len] = '\0';
  return buf;
}

/* One "input|output <dtype> [d0,d1,...] <name>" line into s; 0 on success. */
static int parse_spec(char* line, io_spec* s, const char* path, int lineno, char* err,
                      size_t errlen) {
  char* p = line;
  char* dtype = p;
  while (*p && *p != ' ') ++p;
  if (*p != ' ' || (size_t)(p - dtype) >= sizeof s->dtype) goto bad;
  memcpy(s->dtype, dtype, (size_t)(p - dtype));
  s->dtype[p - dtype] = '\0';
  while (*p == ' ') ++p;
  if (*p++ != '[') goto bad;
  s->info.ndim = 0;
  while (*p != ']') {
    char* end;
    long long d = strtoll(p, &end, 10);
    if (end == p || d < 0 || s->info.ndim >= MCOPT_MAX_NDIM) goto bad;
    s->shape[s->info.ndim++] = d;
    p = end;
    if (*p == ',') ++p;
    else if (*p != ']') goto bad;
  }
  ++p;
  while (*p == ' ') ++p;
  if (*p == '\0') goto bad;
  s->name = strdup(p);
  TVMFFIByteArray dt = {s->dtype, strlen(s->dtype)};
  if (s->name == NULL || TVMFFIDataTypeFromString(&dt, &s->dl_dtype) != 0) {
    char where[512];
    snprintf(where, sizeof where, "%s line %d", path, lineno);
    raised_err(err, errlen, where);
    return -1;
  }
  size_t count = 1;
  for (int i = 0; i < s->info.ndim; ++i) count *= (size_t)s->shape[i];
  s->info.nbytes = count * (((size_t)s->dl_dtype.bits * s->dl_dtype.lanes + 7) / 8);
  s->info.name = s->name;
  s->info.dtype = s->dtype;
  s->info.shape = s->shape;
  return 0;
bad:
  set_err(err, errlen, "%s line %d: expected \"input|output <dtype> [d0,d1,...] <name>\"", path,
          lineno);
  return -1;
}

static int read_io(mcopt_model* m, const char* path, char* err, size_t errlen) {
  char* text = read_file(path, err, errlen);
  if (text == NULL) return -1;
  int rc = 0, lineno = 0, header = 0, cap = 0;
  for (char* p = text; *p; ++p) cap += *p == '\n';
  m->ins = (io_spec*)calloc((size_t)cap + 1, sizeof(io_spec));
  m->outs = (io_spec*)calloc((size_t)cap + 1, sizeof(io_spec));
  if (m->ins == NULL || m->outs == NULL) {
    set_err(err, errlen, "out of memory");
    free(text);
    return -1;
  }
  char* save = NULL;
  char* line = text;
  for (; rc == 0 && line != NULL; line = save) {
    save = strchr(line, '\n');
    if (save != NULL) *save++ = '\0';
    ++lineno;
    size_t len = strlen(line);
    while (len > 0 && (line[len - 1] == '\r' || line[len - 1] == ' ')) line[--len] = '\0';
    if (len == 0 || line[0] == '#') continue;
    if (!header) {
      if (strcmp(line, "mcopt-io 1") != 0) {
        set_err(err, errlen, "%s: not an mcopt I/O description (first line must be "
                "\"mcopt-io 1\")", path);
        rc = -1;
      }
      header = 1;
    } else if (strncmp(line, "input ", 6) == 0) {
      rc = parse_spec(line + 6, &m->ins[m->n_in], path, lineno, err, errlen);
      m->n_in += rc == 0;
    } else if (strncmp(line, "output ", 7) == 0) {
      rc = parse_spec(line + 7, &m->outs[m->n_out], path, lineno, err, errlen);
      m->n_out += rc == 0;
    } else {
      set_err(err, errlen, "%s line %d: expected \"input ...\" or \"output ...\"", path, lineno);
      rc = -1;
    }
  }
  free(text);
  if (rc == 0 && (m->n_in == 0 || m->n_out == 0)) {
    set_err(err, errlen, "%s: lists no %s", path, m->n_in == 0 ? "input" : "output");
    rc = -1;
  }
  return rc;
}

/* ---- threads ---------------------------------------------------------------------------------- */

/* What mcopt.targets.cpu.host_threads.configure_threads does in Python: unless TVM_NUM_THREADS or
 * OMP_NUM_THREADS is set, set TVM_NUM_THREADS to the physical cores of this process's affinity
 * mask (TVM's default is half the logical CPUs on x86, which halves the pool where each core has
 * one hardware thread, as on most cloud VMs). TVM reads it when the first parallel loop runs. */
static void configure_threads(void) {
  const char* a = getenv("TVM_NUM_THREADS");
  const char* b = getenv("OMP_NUM_THREADS");
  if ((a != NULL && *a) || (b != NULL && *b)) return;
#ifdef __linux__
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) != 0) return;
  int ncpu = CPU_COUNT(&set), cores = 0;
  char(*seen)[64] = (char(*)[64])calloc((size_t)ncpu + 1, 64);
  if (seen == NULL) return;
  for (int cpu = 0; cpu < CPU_SETSIZE && cores >= 0; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    char path[96], line[64] = {0};
    snprintf(path, sizeof path, "/sys/devices/system/cpu/cpu%d/topology/thread_siblings_list", cpu);
    FILE* f = fopen(path, "r");
    if (f == NULL || fgets(line, sizeof line, f) == NULL) {
      cores = -1; /* no topology: count CPUs */
    } else {
      int k = 0;
      while (k < cores && strcmp(seen[k], line) != 0) ++k;
      if (k == cores && cores < ncpu) memcpy(seen[cores++], line, sizeof line);
    }
    if (f != NULL) fclose(f);
  }
  free(seen);
  char value[16];
  snprintf(value, sizeof value, "%d", cores > 0 ? cores : ncpu > 0 ? ncpu : 1);
  setenv("TVM_NUM_THREADS", value, 0);
#endif
}

/* ---- loading ---------------------------------------------------------------------------------- */

static void format_shape(char* buf, size_t n, const int64_t* shape, int ndim) {
  size_t len = (size_t)snprintf(buf, n, "[");
  for (int k = 0; k < ndim && len < n; ++k)
    len += (size_t)snprintf(buf + len, n - len, k ? ",%lld" : "%lld", (long long)shape[k]);
  if (len < n) snprintf(buf + len, n - len, "]");
}

/* The outputs of one call as owned tensors in out[0..n_out), checked against the I/O spec. */
static int check_outputs(mcopt_model* m, TVMFFIAny* ret, TVMFFIObjectHandle* out, char* err,
                         size_t errlen) {
  int count = 0;
  if (flatten(ret, out, m->n_out, &count, err, errlen) != 0) {
    for (int i = 0; i < count && i < m->n_out; ++i) release(&out[i]);
    return -1;
  }
  if (count != m->n_out) {
    set_err(err, errlen, "the library returns %d output(s), its I/O description lists %d", count,
            m->n_out);
    for (int i = 0; i < count && i < m->n_out; ++i) release(&out[i]);
    return -1;
  }
  for (int i = 0; i < m->n_out; ++i) {
    const DLTensor* d = dltensor(out[i]);
    const io_spec* s = &m->outs[i];
    int same = d->ndim == s->info.ndim && d->dtype.code == s->dl_dtype.code &&
               d->dtype.bits == s->dl_dtype.bits && d->dtype.lanes == s->dl_dtype.lanes;
    int compact = d->device.device_type == kDLCPU;
    int64_t stride = 1;
    for (int k = d->ndim - 1; k >= 0; --k) {
      same = same && d->shape[k] == s->shape[k];
      compact = compact && (d->strides == NULL || d->shape[k] == 1 || d->strides[k] == stride);
      stride *= d->shape[k];
    }
    if (!same || !compact) {
      char got[160], want[160];
      format_shape(got, sizeof got, d->shape, d->ndim);
      format_shape(want, sizeof want, s->shape, s->info.ndim);
      set_err(err, errlen, "output %d (%s): the I/O description says %s%s, the library returns "
              "%s (dtype code %d, %d bits%s)", i, s->name, s->dtype, want, got,
              (int)d->dtype.code, (int)d->dtype.bits,
              compact ? "" : ", not a dense host tensor");
      for (int k = 0; k < m->n_out; ++k) release(&out[k]);
      return -1;
    }
  }
  return 0;
}

/* Set up the allocation-free entry when the library has it (see the file comment). 0: set up or
 * absent (m->allocation_free tells), -1: an error. */
static int setup_bound(mcopt_model* m, char* err, size_t errlen) {
  int missing_alloc, missing_bound, rc = -1;
  TVMFFIObjectHandle f_alloc = module_function(m->vm, "main_bound_alloc", &missing_alloc, err,
                                               errlen);
  if (f_alloc == NULL) return missing_alloc ? 0 : -1;
  TVMFFIObjectHandle f_bound = module_function(m->vm, "main_bound", &missing_bound, err, errlen);
  TVMFFIObjectHandle* first = (TVMFFIObjectHandle*)calloc((size_t)m->n_out, sizeof(void*));
  TVMFFIAny* args = NULL;
  TVMFFIAny ret;
  if (f_bound == NULL) {
    rc = missing_bound ? 0 : -1;
    goto done;
  }
  if (call(f_alloc, NULL, 0, &ret, err, errlen, "main_bound_alloc") != 0) goto done;
  m->out_tensors = (TVMFFIObjectHandle*)calloc((size_t)m->n_out, sizeof(void*));
  m->bound_args = (TVMFFIObjectHandle*)calloc(256, sizeof(void*));
  int count = 0;
  if (first == NULL || m->out_tensors == NULL || m->bound_args == NULL) {
    any_release(&ret);
    set_err(err, errlen, "out of memory");
    goto done;
  }
  if (flatten(&ret, m->bound_args, 256, &count, err, errlen) != 0) goto done;
  if (count > 256) {
    set_err(err, errlen, "main_bound_alloc returned %d buffers (at most 256 supported)", count);
    m->n_bound_args = 256;
    goto done;
  }
  m->n_bound_args = count;
  int n = m->n_in + count + 1; /* +1: set_input's function name */
  args = (TVMFFIAny*)calloc((size_t)n, sizeof(TVMFFIAny));
  if (args == NULL) {
    set_err(err, errlen, "out of memory");
    goto done;
  }
  args[0] = any_str("main_bound");
  for (int i = 0; i < m->n_in; ++i) args[1 + i] = any_obj(m->in_tensors[i]);
  for (int i = 0; i < count; ++i) args[1 + m->n_in + i] = any_obj(m->bound_args[i]);
  /* two calls; the second while the first's outputs live: outputs that stay put are buffers */
  if (call(f_bound, args + 1, n - 1, &ret, err, errlen, "main_bound") != 0 ||
      check_outputs(m, &ret, first, err, errlen) != 0)
    goto done;
  if (call(f_bound, args + 1, n - 1, &ret, err, errlen, "main_bound") != 0 ||
      check_outputs(m, &ret, m->out_tensors, err, errlen) != 0)
    goto done;
  int fixed = 1;
  for (int i = 0; i < m->n_out; ++i) fixed &= tensor_data(first[i]) == tensor_data(m->out_tensors[i]);
  if (fixed) {
    int missing;
    TVMFFIObjectHandle set_input = module_function(m->vm, "set_input", &missing, err, errlen);
    m->f_invoke = module_function(m->vm, "invoke_stateful", &missing, err, errlen);
    if (set_input == NULL || m->f_invoke == NULL) {
      if (missing) set_err(err, errlen, "the VM has no set_input / invoke_stateful");
      release(&set_input);
      goto done;
    }
    rc = call(set_input, args, n, &ret, err, errlen, "set_input");
    any_release(&ret);
    release(&set_input);
    if (rc != 0) goto done;
    m->out_data = (const void**)calloc((size_t)m->n_out, sizeof(void*));
    if (m->out_data == NULL) {
      set_err(err, errlen, "out of memory");
      rc = -1;
      goto done;
    }
    for (int i = 0; i < m->n_out; ++i) m->out_data[i] = tensor_data(m->out_tensors[i]);
    m->allocation_free = 1;
  }
  rc = 0;
done:
  if (first != NULL)
    for (int i = 0; i < m->n_out; ++i) release(&first[i]);
  free(first);
  free(args);
  if (!m->allocation_free && m->out_tensors != NULL) {
    for (int i = 0; i < m->n_out; ++i) release(&m->out_tensors[i]);
    free(m->out_tensors);
    m->out_tensors = NULL;
    for (int i = 0; i < m->n_bound_args; ++i) release(&m->bound_args[i]);
    free(m->bound_args);
    m->bound_args = NULL;
    m->n_bound_args = 0;
  }
  release(&f_alloc);
  release(&f_bound);
  return rc;
}

mcopt_model* mcopt_load_with_io(const char* so_path, const char* io_path, char* err,
                                size_t errlen) {
  if (err != NULL && errlen > 0) err[0] = '\0';
  if (so_path == NULL) {
    set_err(err, errlen, "mcopt_load: so_path is NULL");
    return NULL;
  }
  FILE* probe = fopen(so_path, "rb");
  if (probe == NULL) {
    set_err(err, errlen, "cannot open %s (the compiled library written by save())", so_path);
    return NULL;
  }
  fclose(probe);
  mcopt_model* m = (mcopt_model*)calloc(1, sizeof(mcopt_model));
  char* default_io = NULL;
  /* an absolute path: dlopen searches the library path, not the working directory, for a bare
   * file name */
  char* so_abs = realpath(so_path, NULL);
  if (m == NULL || so_abs == NULL) {
    set_err(err, errlen, m == NULL ? "out of memory" : "cannot resolve the path %s", so_path);
    free(m);
    free(so_abs);
    return NULL;
  }
  if (io_path == NULL) {
    size_t len = strlen(so_path);
    size_t stem = len >= 3 && strcmp(so_path + len - 3, ".so") == 0 ? len - 3 : len;
    default_io = (char*)malloc(stem + sizeof ".io.txt");
    if (default_io == NULL) {
      set_err(err, errlen, "out of memory");
      goto fail;
    }
    memcpy(default_io, so_path, stem);
    strcpy(default_io + stem, ".io.txt");
    io_path = default_io;
  }
  if (read_io(m, io_path, err, errlen) != 0) goto fail;

  /* the library and a VM on the CPU (the VM's loader: registered by libtvm_runtime.so) */
  TVMFFIObjectHandle load = global("ffi.Module.load_from_bytes.relax.VMExecutable", err, errlen);
  if (load == NULL) goto fail;
  release(&load);
  load = global("ffi.ModuleLoadFromFile", err, errlen);
  if (load == NULL) goto fail;
  TVMFFIAny args[3] = {any_str(so_abs), any_none(), any_none()};
  TVMFFIAny ret;
  char what[512];
  snprintf(what, sizeof what, "loading %s", so_path);
  int rc = call(load, args, 1, &ret, err, errlen, what);
  release(&load);
  if (rc != 0) goto fail;
  m->lib = ret.v_obj;
  int missing;
  TVMFFIObjectHandle f = module_function(m->lib, "vm_load_executable", &missing, err, errlen);
  if (f == NULL) {
    if (missing)
      set_err(err, errlen, "%s is not a Relax VM library (no vm_load_executable)", so_path);
    goto fail;
  }
  rc = call(f, NULL, 0, &ret, err, errlen, "vm_load_executable");
  release(&f);
  if (rc != 0) goto fail;
  m->vm = ret.v_obj;
  f = module_function(m->vm, "vm_initialization", &missing, err, errlen);
  if (f == NULL) {
    if (missing) set_err(err, errlen, "the VM has no vm_initialization");
    goto fail;
  }
  args[0] = any_int(kDLCPU);
  args[1] = any_int(0);
  args[2] = any_int(MCOPT_POOLED_ALLOCATOR);
  rc = call(f, args, 3, &ret, err, errlen, "vm_initialization");
  any_release(&ret);
  release(&f);
  if (rc != 0) goto fail;

  /* input tensors */
  m->in_tensors = (TVMFFIObjectHandle*)calloc((size_t)m->n_in, sizeof(void*));
  m->in_data = (void**)calloc((size_t)m->n_in, sizeof(void*));
  if (m->in_tensors == NULL || m->in_data == NULL) {
    set_err(err, errlen, "out of memory");
    goto fail;
  }
  for (int i = 0; i < m->n_in; ++i) {
    m->in_tensors[i] = new_input(&m->ins[i], &m->in_data[i], err, errlen);
    if (m->in_tensors[i] == NULL) goto fail;
  }

  /* the allocation-free entry, else main (checked by one run on zeros) */
  configure_threads();
  if (setup_bound(m, err, errlen) != 0) goto fail;
  if (!m->allocation_free) {
    m->f_main = module_function(m->vm, "main", &missing, err, errlen);
    if (m->f_main == NULL) {
      if (missing) set_err(err, errlen, "%s has no main function", so_path);
      goto fail;
    }
    if (mcopt_run(m, (const void* const*)m->in_data, m->n_in, NULL, m->n_out, err, errlen) != 0)
      goto fail;
  }
  free(default_io);
  free(so_abs);
  return m;
fail:
  free(default_io);
  free(so_abs);
  mcopt_free(m);
  return NULL;
}

mcopt_model* mcopt_load(const char* so_path, char* err, size_t errlen) {
  return mcopt_load_with_io(so_path, NULL, err, errlen);
}

/* ---- queries ---------------------------------------------------------------------------------- */

int mcopt_num_inputs(const mcopt_model* model) { return model ? model->n_in : 0; }
int mcopt_num_outputs(const mcopt_model* model) { return model ? model->n_out : 0; }
int mcopt_allocation_free(const mcopt_model* model) { return model ? model->allocation_free : 0; }

const mcopt_tensor_info* mcopt_input(const mcopt_model* model, int i) {
  return model && i >= 0 && i < model->n_in ? &model->ins[i].info : NULL;
}

const mcopt_tensor_info* mcopt_output(const mcopt_model* model, int i) {
  return model && i >= 0 && i < model->n_out ? &model->outs[i].info : NULL;
}

/* ---- running ---------------------------------------------------------------------------------- */

/* outputs may be NULL (the check run at load): then nothing is copied out. */
int mcopt_run(mcopt_model* m, const void* const* inputs, int num_inputs, void* const* outputs,
              int num_outputs, char* err, size_t errlen) {
  if (m == NULL || inputs == NULL) {
    set_err(err, errlen, "mcopt_run: %s is NULL", m == NULL ? "model" : "inputs");
    return -1;
  }
  if (num_inputs != m->n_in || num_outputs != m->n_out) {
    set_err(err, errlen, "mcopt_run: the model has %d input(s) and %d output(s), got %d and %d",
            m->n_in, m->n_out, num_inputs, num_outputs);
    return -1;
  }
  for (int i = 0; i < m->n_in; ++i) {
    if (inputs[i] == NULL) {
      set_err(err, errlen, "mcopt_run: input %d (%s) is NULL", i, m->ins[i].name);
      return -1;
    }
  }
  if (outputs != NULL) {
    for (int i = 0; i < m->n_out; ++i) {
      if (outputs[i] == NULL) {
        set_err(err, errlen, "mcopt_run: output %d (%s) is NULL", i, m->outs[i].name);
        return -1;
      }
    }
  }
  for (int i = 0; i < m->n_in; ++i)
    if (inputs[i] != m->in_data[i]) memcpy(m->in_data[i], inputs[i], m->ins[i].info.nbytes);
  TVMFFIAny ret;
  if (m->allocation_free) {
    TVMFFIAny name = any_str("main_bound");
    if (call(m->f_invoke, &name, 1, &ret, err, errlen, "running the model") != 0) return -1;
    any_release(&ret);
    if (outputs != NULL)
      for (int i = 0; i < m->n_out; ++i) memcpy(outputs[i], m->out_data[i], m->outs[i].info.nbytes);
    return 0;
  }
  TVMFFIAny stack[16];
  TVMFFIAny* args = m->n_in <= 16 ? stack : (TVMFFIAny*)malloc(sizeof(TVMFFIAny) * m->n_in);
  TVMFFIObjectHandle one[16];
  TVMFFIObjectHandle* outs =
      m->n_out <= 16 ? one : (TVMFFIObjectHandle*)calloc((size_t)m->n_out, sizeof(void*));
  int rc = -1;
  if (args == NULL || outs == NULL) {
    set_err(err, errlen, "out of memory");
    goto done;
  }
  for (int i = 0; i < m->n_in; ++i) args[i] = any_obj(m->in_tensors[i]);
  if (call(m->f_main, args, m->n_in, &ret, err, errlen, "running the model") != 0) goto done;
  if (check_outputs(m, &ret, outs, err, errlen) != 0) goto done;
  for (int i = 0; i < m->n_out; ++i) {
    if (outputs != NULL) memcpy(outputs[i], tensor_data(outs[i]), m->outs[i].info.nbytes);
    release(&outs[i]);
  }
  rc = 0;
done:
  if (args != stack) free(args);
  if (outs != one) free(outs);
  return rc;
}

void mcopt_free(mcopt_model* m) {
  if (m == NULL) return;
  for (int i = 0; m->out_tensors != NULL && i < m->n_out; ++i) release(&m->out_tensors[i]);
  for (int i = 0; m->bound_args != NULL && i < m->n_bound_args; ++i) release(&m->bound_args[i]);
  for (int i = 0; m->in_tensors != NULL && i < m->n_in; ++i) release(&m->in_tensors[i]);
  release(&m->f_main);
  release(&m->f_invoke);
  release(&m->vm); /* the VM holds the executable; the library goes last */
  release(&m->lib);
  for (int i = 0; m->ins != NULL && i < m->n_in; ++i) free(m->ins[i].name);
  for (int i = 0; m->outs != NULL && i < m->n_out; ++i) free(m->outs[i].name);
  free(m->ins);
  free(m->outs);
  free(m->in_tensors);
  free(m->in_data);
  free(m->bound_args);
  free(m->out_tensors);
  free((void*)m->out_data);
  free(m);
}
