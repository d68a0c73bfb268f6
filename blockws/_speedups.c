/* Optional accelerator for blockws.
 *
 * mask(data, key) -> bytes: data XOR key repeated, 8 bytes at a time. The
 * pure-Python fallback in frames.py gives the same result; tests run both.
 *
 * send_now(fd, data) -> int: one send() that never waits, made without
 * letting go of the GIL (where the platform has MSG_DONTWAIT). The
 * fallback in transport.py is socket.send(data, MSG_DONTWAIT).
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

static PyObject *
mask(PyObject *self, PyObject *args)
{
    Py_buffer data, key;
    if (!PyArg_ParseTuple(args, "y*y*:mask", &data, &key)) {
        return NULL;
    }
    if (key.len != 4) {
        PyBuffer_Release(&data);
        PyBuffer_Release(&key);
        PyErr_SetString(PyExc_ValueError, "mask key must be 4 bytes");
        return NULL;
    }
    PyObject *result = PyBytes_FromStringAndSize(NULL, data.len);
    if (result != NULL) {
        const unsigned char *in = data.buf;
        const unsigned char *k = key.buf;
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
        Py_ssize_t n = data.len, i = 0;
        uint64_t k8;
        unsigned char k8bytes[8];
        memcpy(k8bytes, k, 4);
        memcpy(k8bytes + 4, k, 4);
        memcpy(&k8, k8bytes, 8);
        /* Releasing the GIL costs a thread switch when another thread
         * waits for it: only worth it for large payloads. */
        PyThreadState *state = n >= 65536 ? PyEval_SaveThread() : NULL;
        for (; i + 8 <= n; i += 8) {
            uint64_t w;
            memcpy(&w, in + i, 8); /* memcpy: no alignment assumptions */
            w ^= k8;
            memcpy(out + i, &w, 8);
        }
        for (; i < n; i++) {
            out[i] = in[i] ^ k[i & 3];
        }
        if (state != NULL) {
            PyEval_RestoreThread(state);
        }
    }
    PyBuffer_Release(&data);
    PyBuffer_Release(&key);
    return result;
}

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
    return PyModule_Create(&module);
}
