/* Compiled inner loops: media.resample's polyphase FIR for one stream, the block loop media.noise
 * runs a C suppressor through (run_blocks), the WebSocket frames of base64 audio in a JSON
 * envelope (masked_text_frame for the model's append, text_frame for a Twilio-format leg) and
 * G.711 table lookups (expand, compress, at the end).
 *
 * The polyphase FIR:
 *
 * media/resample.py designs the filter and derives, for one group of L outputs that consume M
 * inputs, the tap matrix group[s][r] (s over the `window` inputs the group reaches, starting
 * `lookback` samples before the group's first input; r over the L output phases):
 *
 *     y[q*L + r] = sum_s x[q*M - lookback + s] * group[s][r]
 *
 * This module runs exactly that sum for a stream of int16 chunks. The numpy path in resample.py
 * stays the reference; its per-call overhead (about ten small numpy calls a frame) costs more than
 * the arithmetic, which is why this exists.
 *
 * Layout. Write s = c + M*a with 0 <= c < M. Input x[q*M + s] is then sample q + a of the stream
 * X_c of every M-th input starting at c, so output phase r is a sum of at most M short FIRs, one
 * per residue c, each over a contiguous stream:
 *
 *     y[q*L + r] = sum_c sum_i h_rc[i] * X_c[q + a_rc + i]
 *
 * where h_rc holds column r's taps with s = c (mod M) from the first one that is not zero (s =
 * c + M*a_rc). Each call splits the buffered input into the M streams, then computes BLOCK
 * consecutive outputs of one phase at a time: for each tap, BLOCK products of that tap with BLOCK
 * consecutive stream samples. That inner loop has no reduction across lanes, so a compiler
 * vectorises it at the base instruction set (SSE2, NEON) with the BLOCK sums in registers and
 * without -ffast-math; the order of additions is fixed by the source, so results do not depend on
 * the build. A call whose group count is not a multiple of BLOCK computes the last block in full
 * over zeros and keeps only what it needs.
 *
 * Streaming. One float buffer holds the look-back history followed by input not yet consumed. A
 * call appends its samples, emits every whole group and moves the last `lookback` plus pending
 * samples to the front, the same bookkeeping as the numpy path, so both give the same number of
 * outputs for every chunk.
 *
 * The GIL is held throughout: a 20 ms frame takes a few microseconds, less than handing the GIL
 * over and waiting to get it back would cost the event loop.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <float.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

/* Outputs computed together: 32 floats are 8 SSE or NEON registers of sums, and 20 ms frames of
 * telephony pairs (160 groups) are whole blocks. */
#define BLOCK 32
/* Guards against size arithmetic overflowing; far beyond any telephony design. */
#define MAX_FACTOR 1024
#define MAX_WINDOW (1 << 16)

typedef struct {
    Py_ssize_t residue; /* c: the branch reads stream X_c */
    Py_ssize_t offset;  /* a_rc: stream sample of the first tap, relative to the group */
    Py_ssize_t count;   /* taps */
    float *taps;        /* points into PolyphaseObject.taps */
} Branch;

typedef struct {
    PyObject_HEAD
    Py_ssize_t up, down, lookback, window;
    Branch *branches;     /* every phase's branches, phase by phase */
    Py_ssize_t *phase_at; /* up + 1 entries: phase r's branches are phase_at[r] .. phase_at[r+1] - 1 */
    float *taps;          /* every branch's taps, one after the other */
    Py_ssize_t reach;     /* largest offset + count over the branches */
    float *buf;           /* history, then pending input */
    Py_ssize_t capacity;
    Py_ssize_t fill;      /* valid floats in buf: lookback of history plus pending input */
    float *scratch;       /* per call: the M streams, `stride` floats apart, then the float outputs */
    Py_ssize_t scratch_capacity;
} PolyphaseObject;

/* int16 from float: clamp, then round half to even (as numpy's rint does). Adding 1.5 * 2**23
 * moves any |v| < 2**22 to where a float's unit in the last place is 1, so the FPU's default
 * rounding does the work; unlike a call to rintf, the loop vectorises. It needs float arithmetic
 * without excess precision, which every SSE2 and NEON target has. */
static void
to_int16(int16_t *restrict out, const float *restrict y, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        float v = y[i];
        v = v > 32767.0f ? 32767.0f : v;
        v = v < -32768.0f ? -32768.0f : v;
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0
        const float shift = 12582912.0f;
        v = (v + shift) - shift;
#else
        v = nearbyintf(v);
#endif
        out[i] = (int16_t)v;
    }
}

static int
is_native_format(const char *format, char code)
{
    if (format == NULL) {
        return code == 'B';
    }
    const char native_order = (PY_LITTLE_ENDIAN ? '<' : '>');
    if (format[0] == '@' || format[0] == '=' || format[0] == native_order) {
        format++;
    }
    return format[0] == code && format[1] == '\0';
}

static int
is_byte_format(const char *format)
{
    return is_native_format(format, 'B') || is_native_format(format, 'b') || is_native_format(format, 'c');
}

static void
polyphase_dealloc(PolyphaseObject *self)
{
    PyMem_Free(self->branches);
    PyMem_Free(self->phase_at);
    PyMem_Free(self->taps);
    PyMem_Free(self->buf);
    PyMem_Free(self->scratch);
    PyTypeObject *type = Py_TYPE(self);
    type->tp_free((PyObject *)self);
    Py_DECREF(type); /* instances of a heap type hold a reference to it */
}

static double
tap_at(const Py_buffer *view, Py_ssize_t s, Py_ssize_t r, int is_double)
{
    const char *p = (const char *)view->buf + s * view->strides[0] + r * view->strides[1];
    if (is_double) {
        double d;
        memcpy(&d, p, sizeof d);
        return d;
    }
    float f;
    memcpy(&f, p, sizeof f);
    return f;
}

/* Split each column of the group matrix into its branches (see the top of the file). */
static int
load_taps(PolyphaseObject *self, const Py_buffer *view, int is_double)
{
    Py_ssize_t up = self->up, down = self->down, window = self->window;
    self->branches = PyMem_Calloc((size_t)(up * down), sizeof(Branch));
    self->phase_at = PyMem_Calloc((size_t)(up + 1), sizeof(Py_ssize_t));
    self->taps = PyMem_Calloc((size_t)(window * up), sizeof(float));
    if (self->branches == NULL || self->phase_at == NULL || self->taps == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t used = 0;
    float *next = self->taps;
    for (Py_ssize_t r = 0; r < up; r++) {
        self->phase_at[r] = used;
        Py_ssize_t first = -1, last = -1;
        for (Py_ssize_t s = 0; s < window; s++) {
            double t = tap_at(view, s, r, is_double);
            if (!isfinite(t)) {
                PyErr_SetString(PyExc_ValueError, "group taps must be finite");
                return -1;
            }
            if (t != 0.0) {
                first = (first < 0) ? s : first;
                last = s;
            }
        }
        if (last < 0) {
            continue; /* a phase that is all zeros has no branches: its outputs are 0 */
        }
        for (Py_ssize_t c = 0; c < down; c++) {
            Py_ssize_t start = first + ((c - first) % down + down) % down; /* first s >= first with s = c (mod M) */
            if (start > last) {
                continue;
            }
            Branch *branch = &self->branches[used++];
            branch->residue = c;
            branch->offset = start / down;
            branch->count = (last - start) / down + 1;
            branch->taps = next;
            for (Py_ssize_t i = 0; i < branch->count; i++) {
                next[i] = (float)tap_at(view, start + i * down, r, is_double);
            }
            next += branch->count;
            self->reach = Py_MAX(self->reach, branch->offset + branch->count);
        }
    }
    self->phase_at[up] = used;
    return 0;
}

static PyObject *
polyphase_new(PyTypeObject *type, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"group", "up", "down", "lookback", NULL};
    PyObject *group;
    Py_ssize_t up, down, lookback;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "Onnn:Polyphase", keywords, &group, &up, &down, &lookback)) {
        return NULL;
    }
    if (up < 1 || down < 1 || up > MAX_FACTOR || down > MAX_FACTOR) {
        PyErr_Format(PyExc_ValueError, "up and down must be in 1..%d, got %zd and %zd", MAX_FACTOR, up, down);
        return NULL;
    }
    if (lookback < 0 || lookback > MAX_WINDOW) {
        PyErr_Format(PyExc_ValueError, "lookback must be in 0..%d, got %zd", MAX_WINDOW, lookback);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(group, &view, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    PolyphaseObject *self = NULL;
    int is_double = is_native_format(view.format, 'd') && view.itemsize == sizeof(double);
    int is_float = is_native_format(view.format, 'f') && view.itemsize == sizeof(float);
    if (!is_double && !is_float) {
        PyErr_Format(PyExc_TypeError, "group must hold float32 or float64 taps, got format '%s'",
                     view.format ? view.format : "B");
        goto done;
    }
    if (view.ndim != 2 || view.shape[1] != up) {
        PyErr_Format(PyExc_ValueError, "group must have shape (window, up=%zd)", up);
        goto done;
    }
    Py_ssize_t window = view.shape[0];
    /* The last whole group of a call reads up to lookback + down samples past its start. */
    if (window < 1 || window > lookback + down) {
        PyErr_Format(PyExc_ValueError, "group window %zd must be in 1..lookback + down = %zd", window,
                     lookback + down);
        goto done;
    }
    self = (PolyphaseObject *)type->tp_alloc(type, 0);
    if (self == NULL) {
        goto done;
    }
    self->up = up;
    self->down = down;
    self->lookback = lookback;
    self->window = window;
    self->fill = lookback;
    self->capacity = lookback + down * BLOCK;
    self->buf = PyMem_Calloc((size_t)self->capacity, sizeof(float));
    if (self->buf == NULL) {
        PyErr_NoMemory();
        Py_CLEAR(self);
        goto done;
    }
    if (load_taps(self, &view, is_double) < 0) {
        Py_CLEAR(self);
    }
done:
    PyBuffer_Release(&view);
    return (PyObject *)self;
}

/* Make *array hold at least `needed` floats, keeping its contents. */
static int
reserve(float **array, Py_ssize_t *capacity, Py_ssize_t needed)
{
    if (needed <= *capacity) {
        return 0;
    }
    const Py_ssize_t most = PY_SSIZE_T_MAX / (Py_ssize_t)sizeof(float);
    if (needed > most) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t grown_capacity = Py_MIN(Py_MAX(needed, 2 * *capacity), most);
    float *grown = PyMem_Realloc(*array, (size_t)grown_capacity * sizeof(float));
    if (grown == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    *array = grown;
    *capacity = grown_capacity;
    return 0;
}

static void
widen(float *dst, const char *src, Py_ssize_t n, Py_ssize_t step)
{
    int16_t v;
    if (step == (Py_ssize_t)sizeof v) {
        for (Py_ssize_t i = 0; i < n; i++) {
            memcpy(&v, src + i * (Py_ssize_t)sizeof v, sizeof v);
            dst[i] = (float)v;
        }
        return;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        memcpy(&v, src + i * step, sizeof v);
        dst[i] = (float)v;
    }
}

/* X_c[t] = buf[t*M + c] for each residue c, zeros past the end of the buffered input. */
static void
split(float *restrict streams, const float *restrict buf, Py_ssize_t end, Py_ssize_t down, Py_ssize_t stride)
{
    for (Py_ssize_t c = 0; c < down; c++) {
        float *x = streams + c * stride;
        Py_ssize_t valid = (end > c) ? Py_MIN((end - c + down - 1) / down, stride) : 0;
        for (Py_ssize_t t = 0; t < valid; t++) {
            x[t] = buf[t * down + c];
        }
        memset(x + valid, 0, (size_t)(stride - valid) * sizeof(float));
    }
}

/* x86-64's base instruction set has 4-float vectors; CPUs with AVX have 8. With GCC or Clang on
 * glibc (which resolves the choice once, at load time) the filter is built for both and the
 * wider one runs where the CPU has it: the image still runs on any x86-64. The same products are
 * added in the same order either way (AVX without FMA does not fuse them), so outputs match to the
 * bit. */
#if defined(__x86_64__) && defined(__GLIBC__) && defined(__has_attribute)
#if __has_attribute(target_clones)
#define VECTOR_CLONES __attribute__((target_clones("avx", "default")))
#endif
#endif
#ifndef VECTOR_CLONES
#define VECTOR_CLONES
#endif

/* Every output of `groups` whole groups from the split streams, phase by phase, BLOCK at a time,
 * into y in output order. */
VECTOR_CLONES static void
filter(const PolyphaseObject *self, const float *streams, Py_ssize_t stride, Py_ssize_t groups, float *restrict y)
{
    const Py_ssize_t up = self->up;
    for (Py_ssize_t r = 0; r < up; r++) {
        const Branch *first = self->branches + self->phase_at[r];
        const Branch *stop = self->branches + self->phase_at[r + 1];
        for (Py_ssize_t q0 = 0; q0 < groups; q0 += BLOCK) {
            float acc[BLOCK] = {0.0f};
            for (const Branch *branch = first; branch < stop; branch++) {
                const float *restrict x = streams + branch->residue * stride + q0 + branch->offset;
                const float *restrict h = branch->taps;
                for (Py_ssize_t i = 0; i < branch->count; i++) {
                    const float tap = h[i];
                    for (int k = 0; k < BLOCK; k++) {
                        acc[k] += tap * x[i + k];
                    }
                }
            }
            Py_ssize_t count = Py_MIN(BLOCK, groups - q0);
            for (Py_ssize_t k = 0; k < count; k++) {
                y[(q0 + k) * up + r] = acc[k];
            }
        }
    }
}

PyDoc_STRVAR(process_doc,
"process(samples, /)\n--\n\n"
"Filter a chunk of int16 samples and return the int16 output as a bytearray.\n\n"
"``samples`` is any 1-D buffer of native int16 items (a numpy int16 array, array('h')) or raw\n"
"native-endian PCM16 bytes of even length. The output holds every whole group of ``up`` samples\n"
"the input completes; the rest of the input waits for the next call.");

static PyObject *
polyphase_process(PolyphaseObject *self, PyObject *samples)
{
    Py_buffer view;
    if (PyObject_GetBuffer(samples, &view, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    Py_ssize_t n, step;
    if (view.ndim != 1) {
        PyErr_Format(PyExc_ValueError, "expected a 1-D buffer of samples, got %d dimensions", view.ndim);
        goto done;
    }
    if (is_native_format(view.format, 'h') && view.itemsize == (Py_ssize_t)sizeof(int16_t)) {
        n = view.shape[0];
        step = view.strides[0];
    }
    else if (is_byte_format(view.format) && view.itemsize == 1) {
        if (view.shape[0] % 2 != 0) {
            PyErr_Format(PyExc_ValueError, "PCM16 bytes must have an even length, got %zd bytes", view.shape[0]);
            goto done;
        }
        if (view.strides[0] != 1) {
            PyErr_SetString(PyExc_ValueError, "PCM16 bytes must be contiguous");
            goto done;
        }
        n = view.shape[0] / 2;
        step = 2;
    }
    else {
        PyErr_Format(PyExc_TypeError, "expected native int16 samples or PCM16 bytes, got format '%s' of %zd-byte items",
                     view.format ? view.format : "B", view.itemsize);
        goto done;
    }

    Py_ssize_t fill = self->fill, down = self->down, up = self->up;
    if (n > PY_SSIZE_T_MAX / 16 - fill - down * (BLOCK + self->reach)) {
        PyErr_NoMemory();
        goto done;
    }
    Py_ssize_t end = fill + n;
    Py_ssize_t groups = (end - self->lookback) / down;
    if (groups > PY_SSIZE_T_MAX / 16 / up) {
        PyErr_NoMemory();
        goto done;
    }
    /* Each stream covers the groups rounded up to whole blocks plus the branches' reach. */
    Py_ssize_t stride = (groups + BLOCK - 1) / BLOCK * BLOCK + self->reach;
    /* Allocate everything before touching the state: an allocation may run the garbage collector,
     * and nothing after this point can fail or call back into Python. */
    Py_ssize_t outputs = groups * up;
    result = PyByteArray_FromStringAndSize(NULL, outputs * (Py_ssize_t)sizeof(int16_t));
    if (result == NULL || reserve(&self->buf, &self->capacity, end) < 0
        || reserve(&self->scratch, &self->scratch_capacity, down * stride + outputs) < 0) {
        Py_CLEAR(result);
        goto done;
    }
    float *buf = self->buf;
    widen(buf + fill, view.buf, n, step);
    if (groups > 0) {
        float *streams = self->scratch, *y = self->scratch + down * stride;
        split(streams, buf, end, down, stride);
        filter(self, streams, stride, groups, y);
        to_int16((int16_t *)PyByteArray_AS_STRING(result), y, outputs);
    }
    Py_ssize_t consumed = groups * down;
    memmove(buf, buf + consumed, (size_t)(end - consumed) * sizeof(float));
    self->fill = end - consumed;
done:
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(reset_doc,
"reset()\n--\n\n"
"Forget the history and any pending input, as if just constructed.");

static PyObject *
polyphase_reset(PolyphaseObject *self, PyObject *Py_UNUSED(ignored))
{
    memset(self->buf, 0, (size_t)self->lookback * sizeof(float));
    self->fill = self->lookback;
    Py_RETURN_NONE;
}

static PyObject *
polyphase_get_pending(PolyphaseObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->fill - self->lookback);
}

static PyObject *
polyphase_get_up(PolyphaseObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->up);
}

static PyObject *
polyphase_get_down(PolyphaseObject *self, void *Py_UNUSED(closure))
{
    return PyLong_FromSsize_t(self->down);
}

static PyMethodDef polyphase_methods[] = {
    {"process", (PyCFunction)polyphase_process, METH_O, process_doc},
    {"reset", (PyCFunction)polyphase_reset, METH_NOARGS, reset_doc},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef polyphase_getset[] = {
    {"pending_input", (getter)polyphase_get_pending, NULL, "Input samples waiting for a whole group.", NULL},
    {"up", (getter)polyphase_get_up, NULL, "Output samples per group (L).", NULL},
    {"down", (getter)polyphase_get_down, NULL, "Input samples per group (M).", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

PyDoc_STRVAR(polyphase_doc,
"Polyphase(group, up, down, lookback)\n--\n\n"
"Streaming rational-ratio FIR resampler for int16 audio.\n\n"
"``group`` is the (window, up) float32 or float64 tap matrix of one group of ``up`` outputs that\n"
"consumes ``down`` inputs; its rows start ``lookback`` samples before the group's first input\n"
"(see media.resample).");

/* A heap type, created per module object, so the module holds no state shared between
 * interpreters. */
static PyType_Slot polyphase_slots[] = {
    {Py_tp_dealloc, polyphase_dealloc},
    {Py_tp_doc, (void *)polyphase_doc},
    {Py_tp_methods, polyphase_methods},
    {Py_tp_getset, polyphase_getset},
    {Py_tp_new, polyphase_new},
    {0, NULL},
};

static PyType_Spec polyphase_spec = {
    .name = "media._native.Polyphase",
    .basicsize = sizeof(PolyphaseObject),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_IMMUTABLETYPE,
    .slots = polyphase_slots,
};

/* ---- block processors called through a function pointer -------------------------------------
 *
 * A library that works in place on fixed blocks of int16 samples (the Speex preprocessor's
 * speex_preprocess_run) is called once per 10 ms block. Through ctypes each call costs a
 * microsecond or two of argument conversion, more than a tenth of the work; here the loop over
 * the blocks of a frame, and the copy the in-place call needs, are one Python call. The caller
 * (media.noise) passes the function's and the state's addresses as it got them from ctypes and
 * keeps the library loaded and the state alive for as long as it calls this. */

typedef int (*block_function)(void *state, int16_t *samples);

PyDoc_STRVAR(run_blocks_doc,
"run_blocks(function, state, samples, block, /)\n--\n\n"
"Copy 1-D native int16 ``samples`` and call ``int function(void *state, int16_t *x)`` (both\n"
"given as addresses) on each ``block`` samples of the copy, in place; return the copy as bytes.\n"
"The length must be a multiple of ``block``.");

static PyObject *
native_run_blocks(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "run_blocks() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    void *function = PyLong_AsVoidPtr(args[0]);
    if (function == NULL && PyErr_Occurred()) {
        return NULL;
    }
    void *state = PyLong_AsVoidPtr(args[1]);
    if (state == NULL && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t block = PyLong_AsSsize_t(args[3]);
    if (block == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (function == NULL || state == NULL) {
        PyErr_SetString(PyExc_ValueError, "run_blocks() needs a function and a state");
        return NULL;
    }
    if (block <= 0) {
        PyErr_Format(PyExc_ValueError, "block must be positive, got %zd", block);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[2], &view, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (view.ndim != 1 || !is_native_format(view.format, 'h') || view.itemsize != (Py_ssize_t)sizeof(int16_t)) {
        PyErr_SetString(PyExc_TypeError, "run_blocks() expects 1-D native int16 samples");
        goto done;
    }
    Py_ssize_t n = view.shape[0];
    if (n % block != 0) {
        PyErr_Format(PyExc_ValueError, "%zd samples are not a whole number of %zd-sample blocks", n, block);
        goto done;
    }
    result = PyByteArray_FromStringAndSize(NULL, n * (Py_ssize_t)sizeof(int16_t));
    if (result == NULL) {
        goto done;
    }
    int16_t *x = (int16_t *)PyByteArray_AS_STRING(result);
    const char *in = view.buf;
    Py_ssize_t step = view.strides[0];
    if (step == (Py_ssize_t)sizeof(int16_t)) {
        memcpy(x, in, (size_t)n * sizeof(int16_t));
    }
    else {
        for (Py_ssize_t i = 0; i < n; i++) {
            memcpy(x + i, in + i * step, sizeof(int16_t));
        }
    }
    block_function run = (block_function)function;
    for (Py_ssize_t i = 0; i < n; i += block) {
        run(state, x + i);
    }
done:
    PyBuffer_Release(&view);
    return result;
}

PyDoc_STRVAR(block_levels_doc,
"block_levels(samples, block, /)\n--\n\n"
"The level of each ``block`` samples of 1-D native int16 ``samples``: log10(mean square + 1),\n"
"in bels re one LSB squared, as a list of floats. The length must be a multiple of ``block``.");

static PyObject *
native_block_levels(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "block_levels() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_ssize_t block = PyLong_AsSsize_t(args[1]);
    if (block == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (block <= 0) {
        PyErr_Format(PyExc_ValueError, "block must be positive, got %zd", block);
        return NULL;
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_RECORDS_RO) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (view.ndim != 1 || !is_native_format(view.format, 'h') || view.itemsize != (Py_ssize_t)sizeof(int16_t)) {
        PyErr_SetString(PyExc_TypeError, "block_levels() expects 1-D native int16 samples");
        goto done;
    }
    Py_ssize_t n = view.shape[0];
    if (n % block != 0) {
        PyErr_Format(PyExc_ValueError, "%zd samples are not a whole number of %zd-sample blocks", n, block);
        goto done;
    }
    result = PyList_New(n / block);
    if (result == NULL) {
        goto done;
    }
    const char *in = view.buf;
    Py_ssize_t step = view.strides[0];
    for (Py_ssize_t b = 0; b < n / block; b++) {
        double energy = 0.0;
        for (Py_ssize_t i = b * block; i < (b + 1) * block; i++) {
            int16_t sample;
            memcpy(&sample, in + i * step, sizeof(sample));
            energy += (double)sample * (double)sample;
        }
        PyObject *level = PyFloat_FromDouble(log10(energy / (double)block + 1.0));
        if (level == NULL) {
            Py_CLEAR(result);
            goto done;
        }
        PyList_SET_ITEM(result, b, level);
    }
done:
    PyBuffer_Release(&view);
    return result;
}

/* ---- base64 audio in a JSON envelope as one WebSocket frame ---------------------------------
 *
 * Fifty times a second per call the bridge appends caller audio to the model: a TEXT message
 * `head + base64(audio) + tail`, sent by a client and therefore masked (RFC 6455 5.3). Built in
 * Python it is a base64 call, two concatenations, a frame object, a masking call and a fresh
 * random key from the kernel; here it is one pass into the final buffer (masked_text_frame). The
 * key comes from the caller, four bytes drawn from os.urandom in bulk. A Twilio-format leg sends
 * the caller its agent audio the same way from the server side, unmasked (text_frame). */

static const char b64_alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static Py_ssize_t
b64_encode(const unsigned char *in, Py_ssize_t n, unsigned char *out)
{
    unsigned char *o = out;
    Py_ssize_t i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8) | in[i + 2];
        *o++ = (unsigned char)b64_alphabet[(v >> 18) & 63];
        *o++ = (unsigned char)b64_alphabet[(v >> 12) & 63];
        *o++ = (unsigned char)b64_alphabet[(v >> 6) & 63];
        *o++ = (unsigned char)b64_alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        *o++ = (unsigned char)b64_alphabet[(v >> 18) & 63];
        *o++ = (unsigned char)b64_alphabet[(v >> 12) & 63];
        *o++ = '=';
        *o++ = '=';
    }
    else if (n - i == 2) {
        uint32_t v = ((uint32_t)in[i] << 16) | ((uint32_t)in[i + 1] << 8);
        *o++ = (unsigned char)b64_alphabet[(v >> 18) & 63];
        *o++ = (unsigned char)b64_alphabet[(v >> 12) & 63];
        *o++ = (unsigned char)b64_alphabet[(v >> 6) & 63];
        *o++ = '=';
    }
    return o - out;
}

static int
is_ascii(const unsigned char *text, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (text[i] > 127) {
            return 0;
        }
    }
    return 1;
}

/* The frame of `head + base64(data) + tail`: masked with `key` (4 bytes) when it is not NULL, as a
 * client sends it, else unmasked, as a server does. Header (RFC 6455 5.2): FIN and opcode 1, the
 * mask bit with a 7-bit length, or 126 and a 16-bit length, or 127 and a 64-bit length (network
 * order), then the key when there is one, then the payload. */
static PyObject *
build_text_frame(Py_buffer *head_buf, Py_buffer *data_buf, Py_buffer *tail_buf, const unsigned char *key)
{
    const unsigned char *head = head_buf->buf, *data = data_buf->buf, *tail = tail_buf->buf;
    if (!is_ascii(head, head_buf->len) || !is_ascii(tail, tail_buf->len)) {
        PyErr_SetString(PyExc_ValueError, "head and tail must be ASCII");
        return NULL;
    }
    Py_ssize_t room = PY_SSIZE_T_MAX - 16 - head_buf->len - tail_buf->len; /* for the base64 text */
    if (data_buf->len / 3 + 1 > room / 4) {
        PyErr_SetString(PyExc_OverflowError, "data too long for one frame");
        return NULL;
    }
    Py_ssize_t encoded = (data_buf->len + 2) / 3 * 4;
    Py_ssize_t length = head_buf->len + encoded + tail_buf->len;
    Py_ssize_t header = length < 126 ? 2 : (length < 65536 ? 4 : 10);
    Py_ssize_t key_bytes = key != NULL ? 4 : 0;
    PyObject *result = PyBytes_FromStringAndSize(NULL, header + key_bytes + length);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    unsigned char mask_bit = key != NULL ? 0x80 : 0x00;
    out[0] = 0x81; /* FIN, TEXT */
    if (header == 2) {
        out[1] = (unsigned char)(mask_bit | length);
    }
    else if (header == 4) {
        out[1] = mask_bit | 126;
        out[2] = (unsigned char)(length >> 8);
        out[3] = (unsigned char)length;
    }
    else {
        out[1] = mask_bit | 127;
        uint64_t len64 = (uint64_t)length;
        for (int b = 0; b < 8; b++) {
            out[2 + b] = (unsigned char)(len64 >> (56 - 8 * b));
        }
    }
    unsigned char *payload = out + header + key_bytes;
    memcpy(payload, head, (size_t)head_buf->len);
    b64_encode(data, data_buf->len, payload + head_buf->len);
    memcpy(payload + head_buf->len + encoded, tail, (size_t)tail_buf->len);
    if (key == NULL) {
        return result;
    }
    memcpy(out + header, key, 4);
    /* Eight bytes at a time (the key repeated twice: the payload starts at a multiple of 4 from
     * the key's first byte), the rest one by one. */
    uint64_t key8;
    unsigned char key_twice[8];
    memcpy(key_twice, key, 4);
    memcpy(key_twice + 4, key, 4);
    memcpy(&key8, key_twice, 8);
    Py_ssize_t i = 0;
    for (; i + 8 <= length; i += 8) {
        uint64_t word;
        memcpy(&word, payload + i, 8);
        word ^= key8;
        memcpy(payload + i, &word, 8);
    }
    for (; i < length; i++) {
        payload[i] ^= key[i & 3];
    }
    return result;
}

/* Acquires the first `count` arguments as simple buffers; on failure releases what it took. */
static int
get_buffers(PyObject *const *args, Py_buffer *views, int count)
{
    for (int held = 0; held < count; held++) {
        if (PyObject_GetBuffer(args[held], &views[held], PyBUF_SIMPLE) < 0) {
            while (held > 0) {
                PyBuffer_Release(&views[--held]);
            }
            return -1;
        }
    }
    return 0;
}

PyDoc_STRVAR(masked_text_frame_doc,
"masked_text_frame(head, data, tail, key, /)\n--\n\n"
"One final, masked WebSocket TEXT frame whose payload is ``head + base64(data) + tail``, masked\n"
"with the 4-byte ``key``. ``head`` and ``tail`` must be ASCII (they are sent as they are).");

static PyObject *
native_masked_text_frame(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_Format(PyExc_TypeError, "masked_text_frame() takes 4 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer parts[4];
    if (get_buffers(args, parts, 4) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (parts[3].len != 4) {
        PyErr_Format(PyExc_ValueError, "the masking key must be 4 bytes, got %zd", parts[3].len);
    }
    else {
        result = build_text_frame(&parts[0], &parts[1], &parts[2], parts[3].buf);
    }
    for (int i = 0; i < 4; i++) {
        PyBuffer_Release(&parts[i]);
    }
    return result;
}

PyDoc_STRVAR(text_frame_doc,
"text_frame(head, data, tail, /)\n--\n\n"
"One final, unmasked WebSocket TEXT frame (as a server sends it) whose payload is\n"
"``head + base64(data) + tail``. ``head`` and ``tail`` must be ASCII.");

static PyObject *
native_text_frame(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_Format(PyExc_TypeError, "text_frame() takes 3 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer parts[3];
    if (get_buffers(args, parts, 3) < 0) {
        return NULL;
    }
    PyObject *result = build_text_frame(&parts[0], &parts[1], &parts[2], NULL);
    for (int i = 0; i < 3; i++) {
        PyBuffer_Release(&parts[i]);
    }
    return result;
}

/* ---- G.711 by table --------------------------------------------------------------------------
 *
 * media/g711.py builds the tables (from the bit-level definitions, checked against the ITU
 * reference values); these two loops only look them up. numpy's take() does the same at about ten
 * times the cost for a 160-sample frame, most of it in setting up the call. */

PyDoc_STRVAR(expand_doc,
"expand(table, codes, /)\n--\n\n"
"Native int16 samples ``table[c]`` for each byte ``c`` of ``codes``; ``table`` holds 256 native\n"
"int16 values. Returns a bytearray.");

static PyObject *
native_expand(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "expand() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer parts[2]; /* the table, the codes */
    if (get_buffers(args, parts, 2) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (parts[0].len != 256 * (Py_ssize_t)sizeof(int16_t)) {
        PyErr_Format(PyExc_ValueError, "the table must hold 256 int16 values, got %zd bytes", parts[0].len);
        goto done;
    }
    result = PyByteArray_FromStringAndSize(NULL, parts[1].len * (Py_ssize_t)sizeof(int16_t));
    if (result == NULL) {
        goto done;
    }
    int16_t values[256];
    memcpy(values, parts[0].buf, sizeof(values));
    const unsigned char *in = parts[1].buf;
    int16_t *out = (int16_t *)PyByteArray_AS_STRING(result);
    for (Py_ssize_t i = 0; i < parts[1].len; i++) {
        out[i] = values[in[i]];
    }
done:
    PyBuffer_Release(&parts[1]);
    PyBuffer_Release(&parts[0]);
    return result;
}

PyDoc_STRVAR(compress_doc,
"compress(table, samples, /)\n--\n\n"
"One byte ``table[s & 0xFFFF]`` for each sample ``s`` of 1-D native int16 ``samples``; ``table``\n"
"holds 65536 bytes indexed by the sample's unsigned 16-bit view. Returns bytes.");

static PyObject *
native_compress(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_Format(PyExc_TypeError, "compress() takes 2 arguments (%zd given)", nargs);
        return NULL;
    }
    Py_buffer table, view;
    if (PyObject_GetBuffer(args[0], &table, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    PyObject *result = NULL;
    if (PyObject_GetBuffer(args[1], &view, PyBUF_RECORDS_RO) < 0) {
        PyBuffer_Release(&table);
        return NULL;
    }
    if (table.len != 65536) {
        PyErr_Format(PyExc_ValueError, "the table must hold 65536 bytes, got %zd", table.len);
        goto done;
    }
    if (view.ndim != 1 || !is_native_format(view.format, 'h') || view.itemsize != (Py_ssize_t)sizeof(int16_t)) {
        PyErr_SetString(PyExc_TypeError, "compress() expects 1-D native int16 samples");
        goto done;
    }
    Py_ssize_t n = view.shape[0];
    result = PyBytes_FromStringAndSize(NULL, n);
    if (result == NULL) {
        goto done;
    }
    const unsigned char *codes = table.buf;
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    const char *in = view.buf;
    Py_ssize_t step = view.strides[0];
    for (Py_ssize_t i = 0; i < n; i++) {
        uint16_t sample;
        memcpy(&sample, in + i * step, sizeof(sample));
        out[i] = codes[sample];
    }
done:
    PyBuffer_Release(&view);
    PyBuffer_Release(&table);
    return result;
}

static PyMethodDef native_methods[] = {
    {"run_blocks", (PyCFunction)(void (*)(void))native_run_blocks, METH_FASTCALL, run_blocks_doc},
    {"block_levels", (PyCFunction)(void (*)(void))native_block_levels, METH_FASTCALL, block_levels_doc},
    {"masked_text_frame", (PyCFunction)(void (*)(void))native_masked_text_frame, METH_FASTCALL,
     masked_text_frame_doc},
    {"text_frame", (PyCFunction)(void (*)(void))native_text_frame, METH_FASTCALL, text_frame_doc},
    {"expand", (PyCFunction)(void (*)(void))native_expand, METH_FASTCALL, expand_doc},
    {"compress", (PyCFunction)(void (*)(void))native_compress, METH_FASTCALL, compress_doc},
    {NULL, NULL, 0, NULL},
};

static int
native_exec(PyObject *module)
{
    PyObject *type = PyType_FromModuleAndSpec(module, &polyphase_spec, NULL);
    if (type == NULL) {
        return -1;
    }
    int status = PyModule_AddObjectRef(module, "Polyphase", type);
    Py_DECREF(type);
    return status;
}

static PyModuleDef_Slot native_slots[] = {
    {Py_mod_exec, native_exec},
#ifdef Py_mod_multiple_interpreters
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#endif
    {0, NULL},
};

static struct PyModuleDef native_module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "media._native",
    .m_doc = "Compiled streaming polyphase resampler (see media.resample), block runner and block levels "
             "(media.noise), "
             "WebSocket frames of base64 audio (bridge.realtime, bridge.wsmedia) and G.711 table lookups "
             "(media.g711).",
    .m_size = 0,
    .m_methods = native_methods,
    .m_slots = native_slots,
};

PyMODINIT_FUNC
PyInit__native(void)
{
    return PyModuleDef_Init(&native_module);
}
