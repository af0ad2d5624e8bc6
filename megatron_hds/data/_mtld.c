/* MTLD over token ids in C: the per-token loop of megatron_hds.data.quality.mtld.
 *
 * Built by setup.py as an optional extension. Semantics are those of the pure-Python
 * reference in quality.py (tests compare the two); this file exists only because the
 * Python loop would cost as much as the SentencePiece encode it runs beside.
 *
 * Segment membership uses a stamp table indexed by token id: a token is a repeat in the
 * current segment iff its stamp equals the segment's generation number, so starting a
 * new segment is O(1) (bump the generation) instead of clearing a set.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint32_t *stamps = NULL;
static size_t stamps_size = 0;
static uint32_t generation = 0;

static int ensure_stamps(size_t needed) {
    if (needed <= stamps_size) return 0;
    uint32_t *grown = (uint32_t *)calloc(needed, sizeof(uint32_t));
    if (grown == NULL) return -1;
    free(stamps);
    stamps = grown;
    stamps_size = needed;
    generation = 0;
    return 0;
}

static uint32_t next_generation(void) {
    if (++generation == 0) { /* wrapped: old stamps could collide, so clear them */
        memset(stamps, 0, stamps_size * sizeof(uint32_t));
        generation = 1;
    }
    return generation;
}

/* One function per token width, so the hot loop reads the caller's array in place. */
#define DEFINE_FACTORS(NAME, TYPE)                                                      \
    static double NAME(const TYPE *ids, Py_ssize_t n, int reverse, double threshold) {  \
        double factors = 0.0;                                                           \
        Py_ssize_t count = 0, types = 0;                                                \
        uint32_t gen = next_generation();                                               \
        for (Py_ssize_t k = 0; k < n; k++) {                                            \
            size_t token = (size_t)ids[reverse ? n - 1 - k : k];                        \
            count++;                                                                    \
            if (stamps[token] != gen) {                                                 \
                stamps[token] = gen;                                                    \
                types++;                                                                \
            } else if ((double)types / (double)count <= threshold) {                    \
                factors += 1.0;                                                         \
                count = 0;                                                              \
                types = 0;                                                              \
                gen = next_generation();                                                \
            }                                                                           \
        }                                                                               \
        if (count) factors += (1.0 - (double)types / (double)count) / (1.0 - threshold);\
        return factors;                                                                 \
    }

DEFINE_FACTORS(factors_u16, uint16_t)
DEFINE_FACTORS(factors_i32, int32_t)
DEFINE_FACTORS(factors_i64, int64_t)

/* Largest id, or -1 after setting ValueError for a negative one. */
#define DEFINE_MAX_ID(NAME, TYPE)                                                        \
    static int64_t NAME(const TYPE *ids, Py_ssize_t n) {                                 \
        int64_t max_id = 0;                                                              \
        for (Py_ssize_t i = 0; i < n; i++) {                                             \
            if ((int64_t)ids[i] < 0) {                                                   \
                PyErr_Format(PyExc_ValueError, "token ids must be non-negative, got %lld", \
                             (long long)ids[i]);                                         \
                return -1;                                                               \
            }                                                                            \
            if ((int64_t)ids[i] > max_id) max_id = (int64_t)ids[i];                      \
        }                                                                                \
        return max_id;                                                                   \
    }

DEFINE_MAX_ID(max_u16, uint16_t)
DEFINE_MAX_ID(max_i32, int32_t)
DEFINE_MAX_ID(max_i64, int64_t)

static PyObject *mtld(PyObject *self, PyObject *args) {
    PyObject *obj;
    double threshold;
    if (!PyArg_ParseTuple(args, "Od", &obj, &threshold)) return NULL;
    Py_buffer view;
    if (PyObject_GetBuffer(obj, &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return NULL;
    const char *fmt = view.format ? view.format : "B";
    if (fmt[0] == '<' || fmt[0] == '=' || fmt[0] == '@') fmt++;
    int width = 0;
    if (view.itemsize == 2 && strcmp(fmt, "H") == 0) width = 2;
    else if (view.itemsize == 4 && (strcmp(fmt, "i") == 0 || strcmp(fmt, "l") == 0)) width = 4;
    else if (view.itemsize == 8 && (strcmp(fmt, "q") == 0 || strcmp(fmt, "l") == 0)) width = 8;
    if (!width) {
        PyBuffer_Release(&view);
        PyErr_Format(PyExc_TypeError, "_mtld.mtld expects uint16, int32 or int64 ids, got format '%s'", fmt);
        return NULL;
    }
    Py_ssize_t n = view.len / view.itemsize;
    if (n == 0) {
        PyBuffer_Release(&view);
        return PyFloat_FromDouble(0.0);
    }
    int64_t max_id = width == 2 ? max_u16(view.buf, n) : width == 4 ? max_i32(view.buf, n) : max_i64(view.buf, n);
    if (max_id < 0 || ensure_stamps((size_t)max_id + 1) < 0) {
        PyBuffer_Release(&view);
        return max_id < 0 ? NULL : PyErr_NoMemory();
    }
    double forward, backward;
    if (width == 2) {
        forward = factors_u16(view.buf, n, 0, threshold);
        backward = factors_u16(view.buf, n, 1, threshold);
    } else if (width == 4) {
        forward = factors_i32(view.buf, n, 0, threshold);
        backward = factors_i32(view.buf, n, 1, threshold);
    } else {
        forward = factors_i64(view.buf, n, 0, threshold);
        backward = factors_i64(view.buf, n, 1, threshold);
    }
    PyBuffer_Release(&view);
    double f = forward > 0 ? (double)n / forward : (double)n;
    double b = backward > 0 ? (double)n / backward : (double)n;
    return PyFloat_FromDouble((f + b) / 2.0);
}

static PyMethodDef methods[] = {
    {"mtld", mtld, METH_VARARGS, "mtld(int64_ids, threshold) -> bidirectional MTLD"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_mtld", "C loop for MTLD over token ids.", -1, methods};

PyMODINIT_FUNC PyInit__mtld(void) { return PyModule_Create(&module); }
