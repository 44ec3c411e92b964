/*
 * The CPython binding of the RTP engine (engine.h, engine.c): the module voiceload.media._rtpengine,
 * types in _rtpengine.pyi, its only user voiceload/media/engine.py.
 *
 * Every engine call that takes the engine's lock runs without the GIL (ENGINE_CALL): the clock
 * thread takes that lock every tick, and must never wait for whatever Python thread holds the GIL.
 * Nothing inside ENGINE_CALL may touch a Python object. A channel's playing bytes object is its
 * play owner (rtpe_play): the engine holds one reference to it until it gives it back.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>

#include "engine.h"

typedef struct {
    PyObject_HEAD
    rtpe_engine eng;
} Engine;

/* Run `call` without the GIL; errno as the call left it. */
#define ENGINE_CALL(call) { int err_; Py_BEGIN_ALLOW_THREADS call; err_ = errno; Py_END_ALLOW_THREADS errno = err_; }

static PyObject *no_chan(int i) {
    return PyErr_Format(PyExc_ValueError, "no open media channel %d", i);
}

static PyObject *not_ipv4(const char *host) {
    return PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", "loud_level", NULL};
    int capacity = 1024, loud_level = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ii", kwlist, &capacity, &loud_level)) return -1;
    switch (rtpe_init(&self->eng, capacity, loud_level)) {
    case RTPE_OK: return 0;
    case RTPE_ERR_CAPACITY: PyErr_SetString(PyExc_ValueError, "capacity must be 1..65536"); return -1;
    case RTPE_ERR_NOMEM: PyErr_NoMemory(); return -1;
    default: PyErr_SetString(PyExc_OSError, "could not start the media clock thread"); return -1;
    }
}

static PyObject *Engine_shutdown(Engine *self, PyObject *unused) {
    ENGINE_CALL(rtpe_stop(&self->eng))
    for (int i = 0; i < self->eng.capacity; i++) Py_XDECREF((PyObject *)rtpe_take_play(&self->eng, i));
    Py_RETURN_NONE;
}

static void Engine_dealloc(Engine *self) {
    PyObject *r = Engine_shutdown(self, NULL);
    Py_XDECREF(r);
    rtpe_free(&self->eng);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* open(host) -> (channel, port): a socket bound to host on a free port, nothing sent yet */
static PyObject *Engine_open(Engine *self, PyObject *args) {
    const char *host;
    if (!PyArg_ParseTuple(args, "s", &host)) return NULL;
    struct sockaddr_in a;
    if (rtpe_ipv4(host, 0, &a) != RTPE_OK) return not_ipv4(host);
    int rc, channel = -1, port = 0;
    ENGINE_CALL(rc = rtpe_open(&self->eng, &a, &channel, &port))
    if (rc == RTPE_ERR_SYS) return PyErr_SetFromErrno(PyExc_OSError);
    if (rc != RTPE_OK) return PyErr_Format(PyExc_OSError, "all %d media channels in use", self->eng.capacity);
    return Py_BuildValue("(ii)", channel, port);
}

/* start(channel, remote_host, remote_port, tape_path or None, ssrc) -> tape start (monotonic s) */
static PyObject *Engine_start(Engine *self, PyObject *args) {
    int i, port;
    unsigned int ssrc;
    const char *host;
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "isiOI", &i, &host, &port, &path_obj, &ssrc)) return NULL;
    struct sockaddr_in r;
    if (rtpe_ipv4(host, port, &r) != RTPE_OK) return not_ipv4(host);
    PyObject *bytes = NULL;
    if (path_obj != Py_None && !PyUnicode_FSConverter(path_obj, &bytes)) return NULL;
    const char *path = bytes ? PyBytes_AS_STRING(bytes) : NULL;
    int rc;
    double t0 = 0.0;
    ENGINE_CALL(rc = rtpe_start(&self->eng, i, &r, path, (uint32_t)ssrc, &t0))
    if (rc == RTPE_ERR_TAPE) PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
    Py_XDECREF(bytes);
    switch (rc) {
    case RTPE_OK: return PyFloat_FromDouble(t0);
    case RTPE_ERR_TAPE: return NULL;
    case RTPE_ERR_NOMEM: return PyErr_NoMemory();
    case RTPE_ERR_NOCHAN: return no_chan(i);
    default: return PyErr_Format(PyExc_ValueError, "media channel %d already started", i);
    }
}

/* play(channel, pcmu: bytes) -> monotonic time (s) the first frame goes out (the next tick, about) */
static PyObject *Engine_play(Engine *self, PyObject *args) {
    int i;
    PyObject *data;
    if (!PyArg_ParseTuple(args, "iS", &i, &data)) return NULL;
    Py_INCREF(data);  /* the channel's reference, until the engine gives it back */
    const uint8_t *pcmu = (const uint8_t *)PyBytes_AS_STRING(data);
    size_t len = (size_t)PyBytes_GET_SIZE(data);
    void *old = NULL;
    int rc;
    ENGINE_CALL(rc = rtpe_play(&self->eng, i, pcmu, len, data, &old))
    if (rc != RTPE_OK) { Py_DECREF(data); return no_chan(i); }
    Py_XDECREF((PyObject *)old);
    return PyFloat_FromDouble(rtpe_monotonic());
}

/* set_remote(channel, remote_host or None, remote_port, sending) -> whether the address changed */
static PyObject *Engine_set_remote(Engine *self, PyObject *args) {
    int i, port, sending;
    const char *host;
    if (!PyArg_ParseTuple(args, "izip", &i, &host, &port, &sending)) return NULL;
    struct sockaddr_in r;
    if (host != NULL && rtpe_ipv4(host, port, &r) != RTPE_OK) return not_ipv4(host);
    int rc, moved = 0;
    ENGINE_CALL(rc = rtpe_set_remote(&self->eng, i, host != NULL ? &r : NULL, sending, &moved))
    if (rc == RTPE_ERR_SYS) return PyErr_SetFromErrno(PyExc_OSError);
    if (rc == RTPE_ERR_IDLE) return PyErr_Format(PyExc_ValueError, "media channel %d not started", i);
    if (rc != RTPE_OK) return no_chan(i);
    return PyBool_FromLong(moved);
}

/* last_loud(channel) -> monotonic time (s) the far end was last loud; 0.0 if never */
static PyObject *Engine_last_loud(Engine *self, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->eng.capacity) return PyErr_Format(PyExc_ValueError, "no media channel %ld", i);
    return PyFloat_FromDouble((double)rtpe_last_loud_ns(&self->eng, (int)i) / 1e9);
}

/* close(channel) -> RTP stats; flushes the tape and writes its WAV header */
static PyObject *Engine_close(Engine *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    void *old = NULL;
    rtpe_stats s;
    int rc;
    ENGINE_CALL(rc = rtpe_close(&self->eng, i, &s, &old))
    if (rc != RTPE_OK) return no_chan(i);
    Py_XDECREF((PyObject *)old);
    return Py_BuildValue("{s:K,s:L,s:K,s:d,s:d,s:d,s:K,s:K,s:K,s:I,s:I}",
                         "rx_packets", s.rx_packets, "rx_lost", s.rx_lost, "rx_other_pt", s.rx_other_pt,
                         "rx_jitter_ms_mean", s.rx_jitter_ms_mean, "rx_jitter_ms_max", s.rx_jitter_ms_max,
                         "rx_delay_ms_max", s.rx_delay_ms_max,
                         "tx_packets", s.tx_packets, "tx_errors", s.tx_errors, "late_samples", s.late_samples,
                         "rx_sources", s.rx_sources, "moves", s.moves);
}

/* health() -> the clock's lateness and load since the previous call */
static PyObject *Engine_health(Engine *self, PyObject *unused) {
    rtpe_health h;
    ENGINE_CALL(rtpe_health_take(&self->eng, &h))
    return Py_BuildValue("{s:d,s:d,s:d,s:L,s:L,s:i}", "late_max_ms", h.late_max_ms,
                         "busy_mean_ms", h.busy_mean_ms, "busy_max_ms", h.busy_max_ms,
                         "skipped_ticks", h.skipped_ticks, "ticks", h.ticks, "running", h.running);
}

static PyMethodDef Engine_methods[] = {
    {"open", (PyCFunction)Engine_open, METH_VARARGS, "open(host) -> (channel, port): bind a call's RTP socket"},
    {"start", (PyCFunction)Engine_start, METH_VARARGS,
     "start(channel, remote_host, remote_port, tape_path, ssrc) -> tape start, monotonic seconds"},
    {"play", (PyCFunction)Engine_play, METH_VARARGS, "play(channel, pcmu) -> monotonic time the first frame goes out"},
    {"set_remote", (PyCFunction)Engine_set_remote, METH_VARARGS,
     "set_remote(channel, remote_host or None, remote_port, sending) -> True when the address changed"},
    {"last_loud", (PyCFunction)Engine_last_loud, METH_O,
     "last_loud(channel) -> monotonic time (s) the far end was last at least loud_level; 0.0 if never"},
    {"close", (PyCFunction)Engine_close, METH_VARARGS, "close(channel) -> RTP stats; completes the tape"},
    {"health", (PyCFunction)Engine_health, METH_NOARGS, "health() -> clock lateness and load since the last call"},
    {"shutdown", (PyCFunction)Engine_shutdown, METH_NOARGS, "stop the clock thread and close every channel"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "voiceload.media._rtpengine.Engine",
    .tp_basicsize = sizeof(Engine),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Caller-side RTP: one clock thread sends, receives and tapes every channel (see module doc)",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Engine_init,
    .tp_dealloc = (destructor)Engine_dealloc,
    .tp_methods = Engine_methods,
};

static PyObject *encode_pcmu(PyObject *mod, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    Py_ssize_t n = b.len / 2;
    PyObject *out = PyBytes_FromStringAndSize(NULL, n);
    if (out) rtpe_encode_pcmu((const int16_t *)b.buf, (size_t)n, (uint8_t *)PyBytes_AS_STRING(out));
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef module_methods[] = {
    {"encode_pcmu", encode_pcmu, METH_O, "encode_pcmu(int16 samples buffer) -> PCMU bytes (G.711 mu-law)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "voiceload.media._rtpengine",
                                       "voiceload's caller-side RTP engine (see voiceload/media/engine.py)", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__rtpengine(void) {
    rtpe_tables_init();
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) { Py_DECREF(&EngineType); Py_DECREF(m); return NULL; }
    PyModule_AddIntConstant(m, "FRAME_SAMPLES", RTPE_FRAME_SAMPLES);
    PyModule_AddIntConstant(m, "READ_LAG_MS", RTPE_READ_LAG_MS);
    PyModule_AddIntConstant(m, "CLOCK_RATE", RTPE_CLOCK_RATE);
    return m;
}
