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
 * Counts(): per-connection message and byte counts that parse_one() and
 * send_message() add to when given one (see there).
 *
 * send_message(fd, payload, text, key): a whole small message framed and
 * written by one send() that never waits, as send_now(); what didn't fit
 * is returned for the caller to write.
 *
 * parse_one(data, masked, max_size): the message in the bytes one read
 * returned when they are exactly one whole, simple frame, else None (see
 * there); the Python parser in parsing.py decides everything else.
 *
 * recv_one(fd, masked, max_size): one blocking recv() into a buffer on the
 * stack, then what parse_one() would say of those bytes: the message, or
 * the bytes themselves (in a 1-tuple) for the Python parser.
 *
 * split_head(head, max_line, max_headers): an HTTP head (as find_head_end
 * delimits it) split into its start line, its header (name, value) pairs
 * and their index by lower-cased name, when every line is well formed and
 * within the limits, else None: http.py's Python parser then decides, and
 * says what is wrong (it is the grammar's reference; tests compare both).
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
 *   PyBuffer_Release); parse_one() and split_head() read only a bytes
 *   object, which can't change, and return new objects. A caller that writes into the same buffer from
 *   another thread at the same time gets mixed bytes, as it would with
 *   bytearray's own methods, never a write outside the buffer.
 * - xor_key_released() detaches from the interpreter (Py_BEGIN_ALLOW_THREADS)
 *   while it touches only those held buffers; send_now() stays attached
 *   for one send() that can't wait (MSG_DONTWAIT). recv_one() detaches
 *   while it waits in recv(), which writes only into its own stack buffer.
 * - A Counts is only added to by the thread that holds the connection's
 *   reader or send lock; other threads only read it (a count may be one
 *   message old).
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
#include <structmember.h>
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

/* -- Counts ------------------------------------------------------------- */

/* Counts(): messages and their payload bytes, counted by parse_one() and
 * send_message() as they take or send a message (and by add() for the
 * messages the Python paths handle): Server.stats()'s per-connection
 * figures at a few instructions per message instead of two Python integer
 * increments. One thread adds at a time (the holder of the connection's
 * reader lock, or of its send lock); stats() reads from any thread, and
 * may see a count one message old. */
typedef struct {
    PyObject_HEAD
    long long messages;
    long long bytes;
} Counts;

static PyTypeObject CountsType;

static PyObject *
counts_add(Counts *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "add(messages, nbytes)");
        return NULL;
    }
    long long messages = PyLong_AsLongLong(args[0]);
    if (messages == -1 && PyErr_Occurred()) {
        return NULL;
    }
    long long nbytes = PyLong_AsLongLong(args[1]);
    if (nbytes == -1 && PyErr_Occurred()) {
        return NULL;
    }
    self->messages += messages;
    self->bytes += nbytes;
    Py_RETURN_NONE;
}

static PyMethodDef counts_methods[] = {
    {"add", (PyCFunction)(void (*)(void))counts_add, METH_FASTCALL, "Count messages and their payload bytes."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef counts_members[] = {
    {"messages", T_LONGLONG, offsetof(Counts, messages), READONLY, "messages counted"},
    {"bytes", T_LONGLONG, offsetof(Counts, bytes), READONLY, "their payload bytes"},
    {NULL, 0, 0, 0, NULL},
};

static PyTypeObject CountsType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "blockws._speedups.Counts",
    .tp_basicsize = sizeof(Counts),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Messages and payload bytes, counted by parse_one() and send_message().",
    .tp_methods = counts_methods,
    .tp_members = counts_members,
    .tp_new = PyType_GenericNew,
};

/* The Counts given as the optional last argument, or NULL (None or absent). */
static Counts *
counts_arg(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t at)
{
    if (nargs <= at || args[at] == Py_None || Py_TYPE(args[at]) != &CountsType) {
        return NULL;
    }
    return (Counts *)args[at];
}

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

/* send_message(fd, payload, text, key) -> None | bytes
 *
 * A whole message as one frame -- header, then the payload (masked with
 * `key` when it is 4 bytes; b"": unmasked) -- written by one send() that
 * never waits and keeps the GIL, as send_now(). None when all of it went;
 * else the bytes of the frame still to write (all of them when the kernel
 * had no room), for the caller to write as it writes any frame. The
 * payload is under 64 KiB (callers keep it under 16 KiB). The frame is
 * the one Protocol.encode_message gives; tests compare them. */
static PyObject *
send_message(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 4 && nargs != 5) || !PyLong_Check(args[0]) || !PyBytes_CheckExact(args[1])
        || !PyBytes_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "send_message(fd: int, payload: bytes, text: bool, key: bytes, counts=None)");
        return NULL;
    }
    Counts *counts = counts_arg(args, nargs, 4);
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int text = PyObject_IsTrue(args[2]);
    if (text < 0) {
        return NULL;
    }
    const unsigned char *payload = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[1]);
    const unsigned char *key = (const unsigned char *)PyBytes_AS_STRING(args[3]);
    Py_ssize_t keylen = PyBytes_GET_SIZE(args[3]);
    if (n > 0xFFFF || (keylen != 0 && keylen != 4)) {
        PyErr_SetString(PyExc_ValueError, "send_message: a payload of 64 KiB or more, or a key not of 4 bytes");
        return NULL;
    }
    /* Small frames are built on the stack: no allocation per message. */
    unsigned char small[2 + 2 + 4 + 1024];
    Py_ssize_t size = 2 + (n >= 126 ? 2 : 0) + keylen + n;
    unsigned char *frame = size <= (Py_ssize_t)sizeof(small) ? small : PyMem_Malloc((size_t)size);
    if (frame == NULL) {
        return PyErr_NoMemory();
    }
    Py_ssize_t h = 0;
    unsigned char maskbit = keylen ? 0x80 : 0;
    frame[h++] = text ? 0x81 : 0x82;
    if (n < 126) {
        frame[h++] = maskbit | (unsigned char)n;
    }
    else {
        frame[h++] = maskbit | 126;
        frame[h++] = (unsigned char)(n >> 8);
        frame[h++] = (unsigned char)(n & 0xFF);
    }
    if (keylen) {
        memcpy(frame + h, key, 4);
        h += 4;
        xor_key(payload, frame + h, n, key);
    }
    else {
        memcpy(frame + h, payload, (size_t)n);
    }
    int flags = MSG_DONTWAIT;
#ifdef MSG_NOSIGNAL
    flags |= MSG_NOSIGNAL;
#endif
    /* Counted before the bytes can reach the peer (undone below if the send
     * fails): a thread that saw the peer's answer and then reads the counts
     * (Server.stats()) must find the message there -- on a free-threaded
     * build it may read them while this thread is still here. */
    if (counts != NULL) {
        counts->messages++; /* accepted: the caller writes any rest */
        counts->bytes += n;
    }
    ssize_t sent;
    do {
        sent = send((int)fd, frame, (size_t)size, flags);
    } while (sent < 0 && errno == EINTR);
    PyObject *result;
    if (sent == size) {
        result = Py_None;
        Py_INCREF(result);
    }
    else if (sent >= 0 || errno == EAGAIN || errno == EWOULDBLOCK) {
        Py_ssize_t done = sent > 0 ? (Py_ssize_t)sent : 0;
        result = PyBytes_FromStringAndSize((const char *)frame + done, size - done);
    }
    else {
        result = PyErr_SetFromErrno(PyExc_OSError);
    }
    if (result == NULL && counts != NULL) {
        counts->messages--;
        counts->bytes -= n;
    }
    if (frame != small) {
        PyMem_Free(frame);
    }
    return result;
}
#endif

/* -- parse_one ---------------------------------------------------------- */

/* parse_one(data, masked, max_size) -> bytes | str | None
 *
 * The message in `data` (the bytes one read returned) when they are exactly
 * one whole, simple frame: FIN, text or binary, no RSV bit, a 7- or 16-bit
 * length (minimally encoded), masked if and only if `masked`, at most
 * `max_size` bytes of payload (-1: no limit), valid UTF-8 for text. The
 * payload comes back unmasked: bytes, or str for text. Anything else --
 * fewer or more bytes than one frame, a control frame, a fragment, a
 * compressed message, invalid UTF-8 -- gives None, and the caller's Python
 * parser takes the bytes and decides (the same messages, the same errors:
 * tests feed both the same frames). No state, nothing kept: sans-I/O. */
/* The message in d[0:n] when it is one whole simple frame (see parse_one);
 * else None (a new reference); NULL with an exception set on an error. */
static PyObject *
parse_frame(const unsigned char *d, Py_ssize_t n, int masked, Py_ssize_t max_size, Counts *counts)
{
    if (n < 2 || (d[0] != 0x81 && d[0] != 0x82) || ((d[1] & 0x80) != 0) != masked) {
        Py_RETURN_NONE;
    }
    Py_ssize_t length = d[1] & 0x7F;
    Py_ssize_t start = 2;
    if (length == 126) {
        if (n < 4) {
            Py_RETURN_NONE;
        }
        length = ((Py_ssize_t)d[2] << 8) | d[3];
        if (length < 126) {
            Py_RETURN_NONE; /* not minimal: the Python parser says what it thinks of it */
        }
        start = 4;
    }
    else if (length == 127) {
        Py_RETURN_NONE;
    }
    const unsigned char *key = d + start;
    if (masked) {
        start += 4;
    }
    if (start + length != n || (max_size >= 0 && length > max_size)) {
        Py_RETURN_NONE;
    }
    PyObject *payload = PyBytes_FromStringAndSize(masked ? NULL : (const char *)d + start, length);
    if (payload == NULL) {
        return NULL;
    }
    if (masked) {
        xor_key(d + start, (unsigned char *)PyBytes_AS_STRING(payload), length, key);
    }
    if (d[0] == 0x82) {
        if (counts != NULL) {
            counts->messages++;
            counts->bytes += length;
        }
        return payload;
    }
    PyObject *text = PyUnicode_DecodeUTF8(PyBytes_AS_STRING(payload), length, NULL);
    Py_DECREF(payload);
    if (text == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear();
        Py_RETURN_NONE; /* the Python parser fails the connection with 1007 */
    }
    if (text != NULL && counts != NULL) {
        counts->messages++;
        counts->bytes += length;
    }
    return text;
}

/* The arguments of parse_one() and recv_one(): (first, masked, max_size,
 * counts=None), `first` checked by the caller (`first_ok`); `usage` is the
 * TypeError's message. */
static int
frame_args(PyObject *const *args, Py_ssize_t nargs, int first_ok, const char *usage, int *masked, Py_ssize_t *max_size,
           Counts **counts)
{
    if ((nargs != 3 && nargs != 4) || !first_ok) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    *counts = counts_arg(args, nargs, 3);
    *masked = PyObject_IsTrue(args[1]);
    if (*masked < 0) {
        return -1;
    }
    *max_size = PyLong_AsSsize_t(args[2]);
    if (*max_size == -1 && PyErr_Occurred()) {
        return -1;
    }
    return 0;
}

static PyObject *
parse_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int masked;
    Py_ssize_t max_size;
    Counts *counts;
    if (frame_args(args, nargs, nargs > 0 && PyBytes_CheckExact(args[0]),
                   "parse_one(data: bytes, masked: bool, max_size: int, counts=None)", &masked, &max_size, &counts)
        < 0) {
        return NULL;
    }
    return parse_frame((const unsigned char *)PyBytes_AS_STRING(args[0]), PyBytes_GET_SIZE(args[0]), masked, max_size,
                       counts);
}

#ifdef MSG_DONTWAIT
/* What recv_one() reads at most: on the stack, so that a small message
 * costs no allocation but its own (socket.recv(64 KiB) allocates 64 KiB
 * and shrinks it). Small enough for any thread's stack. */
#define RECV_ONE_SIZE 16384

/* recv_one(fd, masked, max_size, counts=None) -> bytes | str | (bytes,)
 *
 * One blocking recv() on `fd` (a socket in blocking mode), letting go of
 * the GIL while it waits, as socket.recv() does (EINTR: signal handlers
 * run, then it reads again; an error is the OSError socket.recv() raises).
 * When the bytes read are one whole simple frame, its message, as
 * parse_one() gives it; else a 1-tuple of the bytes read (b"" at EOF), for
 * the Python parser. A read that fills the buffer is never taken as a
 * message: more of it may be waiting. */
static PyObject *
recv_one(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    int masked;
    Py_ssize_t max_size;
    Counts *counts;
    if (frame_args(args, nargs, nargs > 0 && PyLong_Check(args[0]),
                   "recv_one(fd: int, masked: bool, max_size: int, counts=None)", &masked, &max_size, &counts)
        < 0) {
        return NULL;
    }
    long fd = PyLong_AsLong(args[0]);
    if (fd == -1 && PyErr_Occurred()) {
        return NULL;
    }
    unsigned char buf[RECV_ONE_SIZE];
    ssize_t n;
    for (;;) {
        int err;
        Py_BEGIN_ALLOW_THREADS
        n = recv((int)fd, buf, sizeof(buf), 0);
        err = errno;
        Py_END_ALLOW_THREADS
        if (n >= 0) {
            break;
        }
        if (err != EINTR) {
            errno = err;
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        if (PyErr_CheckSignals() < 0) {
            return NULL;
        }
    }
    if (n < (ssize_t)sizeof(buf)) {
        PyObject *message = parse_frame(buf, (Py_ssize_t)n, masked, max_size, counts);
        if (message != Py_None) {
            return message; /* or NULL: an error */
        }
        Py_DECREF(message);
    }
    PyObject *data = PyBytes_FromStringAndSize((const char *)buf, (Py_ssize_t)n);
    if (data == NULL) {
        return NULL;
    }
    PyObject *result = PyTuple_Pack(1, data);
    Py_DECREF(data);
    return result;
}
#endif

/* A tchar of RFC 9110 (the token characters of header names). */
static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) {
        return 1;
    }
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* One header line (without its line ending) added to pairs and index.
 * Returns 1 when added, 0 when the line isn't "name: value" as http.py's
 * _FIELD_LINE reads it (a token, blanks, a colon, blanks, a value without
 * control characters but tab, blanks), -1 on an error (an exception set). */
static int
add_field(const unsigned char *line, Py_ssize_t len, PyObject *pairs, PyObject *index)
{
    Py_ssize_t name_end = 0;
    while (name_end < len && is_tchar(line[name_end])) {
        name_end++;
    }
    if (name_end == 0) {
        return 0;
    }
    Py_ssize_t pos = name_end;
    while (pos < len && (line[pos] == ' ' || line[pos] == '\t')) {
        pos++;
    }
    if (pos == len || line[pos] != ':') {
        return 0;
    }
    pos++;
    while (pos < len && (line[pos] == ' ' || line[pos] == '\t')) {
        pos++;
    }
    for (Py_ssize_t i = pos; i < len; i++) {
        unsigned char c = line[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            return 0;
        }
    }
    Py_ssize_t value_end = len;
    while (value_end > pos && (line[value_end - 1] == ' ' || line[value_end - 1] == '\t')) {
        value_end--;
    }
    PyObject *name = PyUnicode_DecodeLatin1((const char *)line, name_end, NULL);
    PyObject *value = PyUnicode_DecodeLatin1((const char *)line + pos, value_end - pos, NULL);
    PyObject *lname = PyUnicode_New(name_end, 127);
    PyObject *pair = NULL;
    int result = -1;
    if (name == NULL || value == NULL || lname == NULL) {
        goto done;
    }
    Py_UCS1 *lower = PyUnicode_1BYTE_DATA(lname);
    for (Py_ssize_t i = 0; i < name_end; i++) {
        unsigned char c = line[i];
        lower[i] = (c >= 'A' && c <= 'Z') ? (Py_UCS1)(c + 32) : (Py_UCS1)c;
    }
    pair = PyTuple_Pack(2, name, value);
    if (pair == NULL || PyList_Append(pairs, pair) < 0) {
        goto done;
    }
    PyObject *values = PyDict_GetItemWithError(index, lname); /* borrowed */
    if (values != NULL) {
        result = PyList_Append(values, value) < 0 ? -1 : 1;
    }
    else if (!PyErr_Occurred()) {
        PyObject *fresh = PyList_New(1);
        if (fresh != NULL) {
            Py_INCREF(value);
            PyList_SET_ITEM(fresh, 0, value);
            result = PyDict_SetItem(index, lname, fresh) < 0 ? -1 : 1;
            Py_DECREF(fresh);
        }
    }
done:
    Py_XDECREF(pair);
    Py_XDECREF(lname);
    Py_XDECREF(value);
    Py_XDECREF(name);
    return result;
}

/* The end of the line that starts at pos (its '\n', or end), and its
 * length without a '\r' before that '\n'. */
static Py_ssize_t
line_end(const unsigned char *p, Py_ssize_t pos, Py_ssize_t end, Py_ssize_t *length)
{
    const unsigned char *nl = memchr(p + pos, '\n', (size_t)(end - pos));
    Py_ssize_t stop = nl == NULL ? end : (Py_ssize_t)(nl - p);
    *length = stop - pos - (nl != NULL && stop > pos && p[stop - 1] == '\r');
    return stop;
}

static PyObject *
split_head(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "split_head(head, max_line, max_headers)");
        return NULL;
    }
    if (!PyBytes_Check(args[0])) {
        Py_RETURN_NONE;
    }
    Py_ssize_t max_line = PyLong_AsSsize_t(args[1]);
    Py_ssize_t max_headers = PyLong_AsSsize_t(args[2]);
    if ((max_line == -1 || max_headers == -1) && PyErr_Occurred()) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t end = PyBytes_GET_SIZE(args[0]);
    /* Only CRLF and LF end lines: a CR anywhere else is the Python parser's
     * to refuse (as a control character, or a malformed line). */
    for (const unsigned char *cr = memchr(p, '\r', (size_t)end); cr != NULL;
         cr = memchr(cr + 1, '\r', (size_t)(end - (cr + 1 - p)))) {
        if (cr + 1 == p + end || cr[1] != '\n') {
            Py_RETURN_NONE;
        }
    }
    /* Blank lines around the head are dropped (text.strip("\n") once CRLF is LF). */
    while (end > 0 && p[end - 1] == '\n') {
        end -= (end > 1 && p[end - 2] == '\r') ? 2 : 1;
    }
    Py_ssize_t pos = 0;
    while (pos < end && (p[pos] == '\n' || p[pos] == '\r')) {
        pos++; /* a '\r' here is one of a CRLF (checked above) */
    }
    if (pos == end) {
        Py_RETURN_NONE;
    }
    Py_ssize_t length;
    Py_ssize_t stop = line_end(p, pos, end, &length);
    if (length > max_line) {
        Py_RETURN_NONE;
    }
    PyObject *start = PyUnicode_DecodeLatin1((const char *)p + pos, length, NULL);
    PyObject *pairs = PyList_New(0);
    PyObject *index = PyDict_New();
    if (start == NULL || pairs == NULL || index == NULL) {
        goto fail;
    }
    Py_ssize_t count = 0;
    while (stop < end) {
        pos = stop + 1;
        stop = line_end(p, pos, end, &length);
        if (++count > max_headers || length > max_line) {
            goto none;
        }
        int added = add_field(p + pos, length, pairs, index);
        if (added < 0) {
            goto fail;
        }
        if (added == 0) {
            goto none;
        }
    }
    PyObject *result = PyTuple_Pack(3, start, pairs, index);
    Py_DECREF(start);
    Py_DECREF(pairs);
    Py_DECREF(index);
    return result;
none:
    Py_DECREF(start);
    Py_DECREF(pairs);
    Py_DECREF(index);
    Py_RETURN_NONE;
fail:
    Py_XDECREF(start);
    Py_XDECREF(pairs);
    Py_XDECREF(index);
    return NULL;
}

static PyMethodDef methods[] = {
    {"parse_one", (PyCFunction)(void (*)(void))parse_one, METH_FASTCALL,
     "The message in data when it is exactly one whole simple frame, else None."},
    {"mask", mask, METH_VARARGS, "XOR data with a 4-byte key repeated."},
    {"split_head", (PyCFunction)(void (*)(void))split_head, METH_FASTCALL,
     "An HTTP head's start line, header pairs and index by lower-cased name, or None: the Python parser decides."},
    {"mask_inplace", mask_inplace, METH_VARARGS, "XOR a writable buffer with a 4-byte key repeated, in place."},
#ifdef MSG_DONTWAIT
    {"send_now", send_now, METH_VARARGS, "send(fd, data, MSG_DONTWAIT) keeping the GIL: bytes sent, 0 if none fit."},
    {"send_message", (PyCFunction)(void (*)(void))send_message, METH_FASTCALL,
     "A whole message as one frame, written by one send() that never waits: None, or the bytes still to write."},
    {"recv_one", (PyCFunction)(void (*)(void))recv_one, METH_FASTCALL,
     "One blocking recv(): the message when the bytes are one whole simple frame, else (bytes,)."},
#endif
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "blockws._speedups", NULL, -1, methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    if (PyType_Ready(&BuilderType) < 0 || PyType_Ready(&CountsType) < 0) {
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
    Py_INCREF(&CountsType);
    if (PyModule_AddObject(m, "Counts", (PyObject *)&CountsType) < 0) {
        Py_DECREF(&CountsType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
