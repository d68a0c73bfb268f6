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
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
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

static int
builder_getbuffer(Builder *self, Py_buffer *view, int flags)
{
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_BufferError, "the Builder's bytes were taken");
        view->obj = NULL;
        return -1;
    }
    if (PyBuffer_FillInfo(view, (PyObject *)self, PyBytes_AS_STRING(self->bytes),
                          PyBytes_GET_SIZE(self->bytes), 0, flags) < 0) {
        return -1;
    }
    self->exports++;
    return 0;
}

static void
builder_releasebuffer(Builder *self, Py_buffer *view)
{
    self->exports--;
}

static PyObject *
builder_take(Builder *self, PyObject *unused)
{
    if (self->bytes == NULL) {
        PyErr_SetString(PyExc_ValueError, "the Builder's bytes were taken already");
        return NULL;
    }
    if (self->exports > 0) {
        PyErr_SetString(PyExc_BufferError, "a view of the Builder is still open");
        return NULL;
    }
    PyObject *result = self->bytes;
    self->bytes = NULL;
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
 * its blocking recv) instead of twice. Callers keep `data` small. */
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
    Py_INCREF(&BuilderType);
    if (PyModule_AddObject(m, "Builder", (PyObject *)&BuilderType) < 0) {
        Py_DECREF(&BuilderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
