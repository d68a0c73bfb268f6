/* Optional accelerator for blockws.
 *
 * mask(data, key) -> bytes: data XOR key repeated, 8 bytes at a time. The
 * pure-Python fallback in frames.py gives the same result; tests run both.
 *
 * mask_inplace(buffer, key): the same XOR, in a writable buffer.
 *
 * send_now(fd, data) -> int: one send() that never waits, made without
 * letting go of the GIL (where the platform has MSG_DONTWAIT). The
 * fallback in transport.py is socket.send(data, MSG_DONTWAIT).
 *
 * Builder(size): a bytes object of `size` bytes under construction. It
 * lends its memory as a writable buffer (recv_into reads into it), and
 * take() hands the bytes object over once no view of it is left: a large
 * message goes from the kernel into the bytes that recv() returns, with no
 * copy and no join. Nobody else sees the bytes object before take(), so
 * writing into it does not break its immutability.
 *
 * Free-threaded CPython (PEP 703, --disable-gil): the module declares that
 * it doesn't need the GIL (Py_MOD_GIL_NOT_USED, in PyInit__speedups), so
 * importing it leaves the GIL off. Why that is safe:
 * - No module state and no static mutable data: BuilderType, the method
 *   tables and the module definition are written once, at import, and only
 *   read afterwards. Nothing is cached between calls.
 * - No shared buffers: mask(), mask_inplace() and send_now() work only on
 *   the buffers their caller passes, held with PyArg_ParseTuple's y* / w*
 *   (an export: the object can be neither resized nor freed until
 *   PyBuffer_Release). A caller that writes into the same buffer from
 *   another thread at the same time gets mixed bytes, as it would with
 *   bytearray's own methods, never a write outside the buffer.
 * - xor_key_released() detaches from the interpreter (Py_BEGIN_ALLOW_THREADS)
 *   while it touches only those held buffers; send_now() stays attached
 *   for one send() that can't wait (MSG_DONTWAIT).
 * - A Builder is the one object with mutable state (`bytes`, `exports`).
 *   In blockws, one thread owns it: the thread receiving a message lends
 *   its memory to that message's recv_into calls (the kernel writes into
 *   it, mask_inplace unmasks it) and then takes the bytes, all inside
 *   connection.py's receive, which one thread runs at a time. Still, a
 *   Builder used from two threads at once must not corrupt memory: each
 *   method holds a per-object critical section (Py_BEGIN_CRITICAL_SECTION,
 *   a no-op with the GIL), so `exports` counts every view (a lost update
 *   would let take() hand over bytes a view can still write into), and a
 *   view is never made of bytes that take() has handed over (and their new
 *   owner may already have freed).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* Before 3.13 there is no free-threaded build and the GIL serialises the
 * Builder's methods: the critical sections become plain blocks. */
#ifndef Py_BEGIN_CRITICAL_SECTION
#define Py_BEGIN_CRITICAL_SECTION(op) {
#define Py_END_CRITICAL_SECTION() }
#endif
#ifndef _WIN32
#include <errno.h>
#include <sys/types.h>
#include <sys/socket.h>
#endif

/* out[i] = in[i] ^ key[i % 4]; `in` and `out` may be the same memory. */
static void
xor_key(const unsigned char *in, unsigned char *out, Py_ssize_t n, const unsigned char *k)
{
    Py_ssize_t i = 0;
    uint64_t k8;
    unsigned char k8bytes[8];
    memcpy(k8bytes, k, 4);
    memcpy(k8bytes + 4, k, 4);
    memcpy(&k8, k8bytes, 8);
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, in + i, 8); /* memcpy: no alignment assumptions */
        w ^= k8;
        memcpy(out + i, &w, 8);
    }
    for (; i < n; i++) {
        out[i] = in[i] ^ k[i & 3];
    }
}

/* xor_key, letting go of the GIL for large payloads only: releasing it
 * costs a thread switch when another thread waits for it. Safe: while
 * exported to us, the buffers can't be resized or freed. */
static void
xor_key_released(const unsigned char *in, unsigned char *out, Py_ssize_t n, const unsigned char *k)
{
    if (n < 65536) {
        xor_key(in, out, n, k);
        return;
    }
    Py_BEGIN_ALLOW_THREADS
    xor_key(in, out, n, k);
    Py_END_ALLOW_THREADS
}

/* 0 if `key` is 4 bytes; else release both buffers, set ValueError, -1. */
static int
check_key(Py_buffer *data, Py_buffer *key)
{
    if (key->len == 4) {
        return 0;
    }
    PyBuffer_Release(data);
    PyBuffer_Release(key);
    PyErr_SetString(PyExc_ValueError, "mask key must be 4 bytes");
    return -1;
}

static PyObject *
mask(PyObject *self, PyObject *args)
{
    Py_buffer data, key;
    if (!PyArg_ParseTuple(args, "y*y*:mask", &data, &key) || check_key(&data, &key) < 0) {
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        xor_key_released(data.buf, (unsigned char *)PyBytes_AS_STRING(result), data.len, key.buf);
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    return result;
}

static PyObject *
mask_inplace(PyObject *self, PyObject *args)
{
    Py_buffer data, key;
    if (!PyArg_ParseTuple(args, "w*y*:mask_inplace", &data, &key) || check_key(&data, &key) < 0) {
        return NULL;
    }
    xor_key_released(data.buf, data.buf, data.len, key.buf);
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    Py_RETURN_NONE;
}

/* -- Builder ------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *bytes; /* NULL once taken */
    Py_ssize_t exports;
} Builder;

static PyObject *
builder_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
    Py_ssize_t size;
    static char *keywords[] = {"size", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "n:Builder", keywords, &size)) {
        return NULL;
    }
    if (size <= 0) {
        /* Size 0 would be the shared empty bytes object: never write there. */
        PyErr_SetString(PyExc_ValueError, "Builder size must be positive");
        return NULL;
    }
    Builder *self = (Builder *)type->tp_alloc(type, 0);
    if (self == NULL) {
        return NULL;
    }
    self->bytes = PyBytes_FromStringAndSize(NULL, size);
    if (self->bytes == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    self->exports = 0;
    return (PyObject *)self;
}

static void
builder_dealloc(Builder *self)
{
    Py_XDECREF(self->bytes);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* The three methods below read and write `bytes` and `exports` inside the
 * object's critical section (see the top of the file for why). */
static int
builder_getbuffer(Builder *self, Py_buffer *view, int flags)
{
    int result = -1;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_BufferError, "the Builder's bytes were taken");
        view->obj = NULL;
    }
    else if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->bytes),
                               PyBytes_GET_SIZE(self->bytes), 0, flags) == 0) {
        self->exports++;
        result = 0;
    }
    Py_END_CRITICAL_SECTION();
    return result;
}

static void
builder_releasebuffer(Builder *self, Py_buffer *view)
{
    Py_BEGIN_CRITICAL_SECTION(self);
    self->exports--;
    Py_END_CRITICAL_SECTION();
}

static PyObject *
builder_take(Builder *self, PyObject *unused)
{
    PyObject *result = NULL;
    Py_BEGIN_CRITICAL_SECTION(self);
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_ValueError, "the Builder's bytes were taken already");
    }
    else if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "a view of the Builder is still open");
    }
    else {
        /* Our reference, handed over: from here on, the caller's. */
        result = self->bytes;
        self->bytes = NULL;
    }
    Py_END_CRITICAL_SECTION();
    return result;
}

static PyBufferProcs builder_as_buffer = {
    (getbufferproc)builder_getbuffer,
    (releasebufferproc)builder_releasebuffer,
};

static PyMethodDef builder_methods[] = {
    {"take", (PyCFunction)builder_take, METH_NOARGS,
     "The bytes built (once, and only when no view of them is open)."},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject BuilderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "blockws._speedups.Builder",
    .tp_basicsize = sizeof(Builder),
    .tp_dealloc = (destructor)builder_dealloc,
    .tp_as_buffer = &builder_as_buffer,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Builder(size): bytes under construction, lent as a writable buffer until take().",
    .tp_methods = builder_methods,
    .tp_new = builder_new,
};

#ifdef MSG_DONTWAIT
/* Why keep the GIL: socket.send() lets it go around the system call, and
 * with many threads busy, taking it back means waiting for the others and
 * a thread switch -- for a call that can't block and takes microseconds.
 * A server thread that echoes then gives up the GIL once per message (in
 * its blocking recv) instead of twice. Callers keep `data` small. On a
 * free-threaded build there is no GIL to keep: the thread stays attached
 * to the interpreter for the call, which can't block a garbage collection
 * for longer than one send() that never waits. */
static PyObject *
send_now(PyObject *self, PyObject *args)
{
    int fd;
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "iy*:send_now", &fd, &data)) {
        return NULL;
    }
    int flags = MSG_DONTWAIT;
#ifdef MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL; /* EPIPE, as socket.send gives with SIGPIPE ignored */
#endif
    ssize_t n;
    do {
        n = send(fd, data.buf, (size_t)data.len, flags);
    } while (n < 0 && errno == EINTR);
    PyBuffer_Release(&data);
    if (n >= 0) {
        return PyLong_FromSsize_t(n);
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
        return PyLong_FromLong(0);
    }
    return PyErr_SetFromErrno(PyExc_OSError);
}
#endif

static PyMethodDef methods[] = {
    {"mask", mask, METH_VARARGS, "XOR data with a 4-byte key repeated."},
    {"mask_inplace", mask_inplace, METH_VARARGS, "XOR a writable buffer with a 4-byte key repeated, in place."},
#ifdef MSG_DONTWAIT
    {"send_now", send_now, METH_VARARGS, "send(fd, data, MSG_DONTWAIT) keeping the GIL: bytes sent, 0 if none fit."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "blockws._speedups", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&BuilderType) < 0) {
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) {
        return NULL;
    }
#ifdef Py_GIL_DISABLED
    /* Without it, free-threaded CPython turns the GIL on for the whole
     * process when this module loads (and warns). Safe: see the top of
     * the file. */
    if (PyUnstable_Module_SetGIL(m, Py_MOD_GIL_NOT_USED) < 0) {
        Py_DECREF(m);
        return NULL;
    }
#endif
    Py_INCREF(&BuilderType);
    if (PyModule_AddObject(m, "Builder", (PyObject *)&BuilderType) < 0) {
        Py_DECREF(&BuilderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
