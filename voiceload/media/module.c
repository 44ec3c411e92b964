/*
 * The CPython binding of the RTP engine (engine.h, engine.c): the module voiceload.media._rtpengine,
 * types in _rtpengine.pyi, its only user voiceload/media/engine.py.
 *
 * Every engine call that takes the engine's lock runs without the GIL (ENGINE_CALL): the clock
 * thread takes that lock every tick, and must never wait for whatever Python thread holds the GIL.
 * Nothing inside ENGINE_CALL may touch a Python object. A channel's playing clip (a tuple of the
 * bytes objects rtpe_clip points into) is its play owner (rtpe_play): the engine holds one
 * reference to it until it gives it back.
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

/* open(host) -> (channel, port, rtcp_port): RTP and RTCP sockets bound to host on free ports, nothing sent yet */
static PyObject *Engine_open(Engine *self, PyObject *args) {
    const char *host;
    if (!PyArg_ParseTuple(args, "s", &host)) return NULL;
    struct sockaddr_in a;
    if (rtpe_ipv4(host, 0, &a) != RTPE_OK) return not_ipv4(host);
    int rc, channel = -1, port = 0, rtcp_port = 0;
    ENGINE_CALL(rc = rtpe_open(&self->eng, &a, &channel, &port, &rtcp_port))
    if (rc == RTPE_ERR_SYS) return PyErr_SetFromErrno(PyExc_OSError);
    if (rc != RTPE_OK) return PyErr_Format(PyExc_OSError, "all %d media channels in use", self->eng.capacity);
    return Py_BuildValue("(iii)", channel, port, rtcp_port);
}

/* start(channel, remote_host, remote_port, tape_path or None, ssrc, codec, pt, event_pt, srtp_tx, srtp_rx,
 *       rtcp_mode, rtcp_host, rtcp_port, stereo) -> tape start (monotonic s) */
static PyObject *Engine_start(Engine *self, PyObject *args) {
    int i, port, codec = RTPE_PCMU, pt = 0, event_pt = -1, rtcp = 0, rtcp_port = 0, stereo = 0;
    unsigned int ssrc;
    const char *host, *rtcp_host = NULL;
    Py_buffer tx_key = {0}, rx_key = {0};
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "isiOI|iiiz*z*izip", &i, &host, &port, &path_obj, &ssrc, &codec, &pt, &event_pt,
                          &tx_key, &rx_key, &rtcp, &rtcp_host, &rtcp_port, &stereo))
        return NULL;
    rtpe_media m = {.codec = codec, .pt = pt, .event_pt = event_pt, .rtcp = rtcp, .stereo = stereo};
    int keys_ok = (tx_key.buf == NULL && rx_key.buf == NULL) ||
                  (tx_key.len == RTPE_SRTP_KEY_LEN && rx_key.len == RTPE_SRTP_KEY_LEN);
    m.srtp_tx_key = tx_key.buf;
    m.srtp_rx_key = rx_key.buf;
    struct sockaddr_in r;
    int addr_ok = rtpe_ipv4(host, port, &r) == RTPE_OK &&
                  (rtcp != 1 || (rtcp_host != NULL && rtpe_ipv4(rtcp_host, rtcp_port, &m.rtcp_remote) == RTPE_OK));
    if (!keys_ok || !addr_ok) {
        if (tx_key.buf) PyBuffer_Release(&tx_key);
        if (rx_key.buf) PyBuffer_Release(&rx_key);
        if (!keys_ok) return PyErr_Format(PyExc_ValueError, "SRTP keys: both, of %d bytes each", RTPE_SRTP_KEY_LEN);
        return not_ipv4(host);
    }
    PyObject *bytes = NULL;
    if (path_obj != Py_None && !PyUnicode_FSConverter(path_obj, &bytes)) return NULL;
    const char *path = bytes ? PyBytes_AS_STRING(bytes) : NULL;
    int rc;
    double t0 = 0.0;
    ENGINE_CALL(rc = rtpe_start(&self->eng, i, &r, path, (uint32_t)ssrc, &m, &t0))
    if (rc == RTPE_ERR_TAPE) PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
    Py_XDECREF(bytes);
    if (tx_key.buf) PyBuffer_Release(&tx_key);
    if (rx_key.buf) PyBuffer_Release(&rx_key);
    switch (rc) {
    case RTPE_OK: return PyFloat_FromDouble(t0);
    case RTPE_ERR_TAPE: return NULL;
    case RTPE_ERR_NOMEM: return PyErr_NoMemory();
    case RTPE_ERR_NOCHAN: return no_chan(i);
    case RTPE_ERR_CODEC: return PyErr_Format(PyExc_ValueError, "codec %d (payload type %d): the engine cannot start it", codec, pt);
    case RTPE_ERR_SRTP: return PyErr_Format(PyExc_ValueError, "libsrtp refused the SRTP keys");
    default: return PyErr_Format(PyExc_ValueError, "media channel %d already started", i);
    }
}

/* play(channel, clip) -> monotonic time (s) the first frame is due. `clip` is encode_clip()'s tuple
 * (frames, offsets, sizes, pcm): the engine keeps a reference to it while it plays. */
static PyObject *Engine_play(Engine *self, PyObject *args) {
    int i;
    PyObject *clip_obj;
    if (!PyArg_ParseTuple(args, "iO!", &i, &PyTuple_Type, &clip_obj)) return NULL;
    PyObject *f, *o, *z, *p;
    if (!PyArg_ParseTuple(clip_obj, "SSSS", &f, &o, &z, &p)) return NULL;
    rtpe_clip clip = {
        .bytes = (const uint8_t *)PyBytes_AS_STRING(f),
        .offsets = (const uint32_t *)PyBytes_AS_STRING(o),
        .sizes = (const uint16_t *)PyBytes_AS_STRING(z),
        .pcm = (const int16_t *)PyBytes_AS_STRING(p),
        .frames = (size_t)PyBytes_GET_SIZE(z) / sizeof(uint16_t),
    };
    if ((size_t)PyBytes_GET_SIZE(o) != clip.frames * sizeof(uint32_t) ||
        (size_t)PyBytes_GET_SIZE(p) != clip.frames * RTPE_FRAME_SAMPLES * sizeof(int16_t))
        return PyErr_Format(PyExc_ValueError, "not a clip of encode_clip()");
    Py_INCREF(clip_obj);  /* the channel's reference, until the engine gives it back */
    void *old = NULL;
    int rc;
    double first = 0.0;
    ENGINE_CALL(rc = rtpe_play(&self->eng, i, &clip, clip_obj, &old, &first))
    if (rc != RTPE_OK) { Py_DECREF(clip_obj); return no_chan(i); }
    Py_XDECREF((PyObject *)old);
    return PyFloat_FromDouble(first);
}

/* dtmf(channel, digits, duration_ms, gap_ms, volume) -> (start, end), monotonic s */
static PyObject *Engine_dtmf(Engine *self, PyObject *args) {
    int i, duration_ms, gap_ms, volume;
    const char *digits;
    if (!PyArg_ParseTuple(args, "isiii", &i, &digits, &duration_ms, &gap_ms, &volume)) return NULL;
    int rc;
    double start = 0.0, end = 0.0;
    ENGINE_CALL(rc = rtpe_dtmf(&self->eng, i, digits, duration_ms, gap_ms, volume, &start, &end))
    if (rc == RTPE_ERR_IDLE) return PyErr_Format(PyExc_ValueError, "media channel %d not started", i);
    if (rc == RTPE_ERR_BUSY)
        return PyErr_Format(PyExc_ValueError, "DTMF %s: digits still being sent, digits other than 0-9*#A-D, "
                            "or no telephone-event negotiated", digits);
    if (rc != RTPE_OK) return no_chan(i);
    return Py_BuildValue("(dd)", start, end);
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
    PyObject *dtmf = PyList_New(s.n_dtmf);
    if (dtmf == NULL) return NULL;
    for (int k = 0; k < s.n_dtmf; k++) {
        PyObject *ev = Py_BuildValue("(C d d)", s.dtmf[k].digit, (double)s.dtmf[k].at_ns / 1e9, s.dtmf[k].duration_ms);
        if (ev == NULL) { Py_DECREF(dtmf); return NULL; }
        PyList_SET_ITEM(dtmf, k, ev);
    }
    return Py_BuildValue("{s:K,s:L,s:K,s:d,s:d,s:d,s:K,s:K,s:K,s:I,s:I,s:K,s:K,s:K,s:K,s:K,s:K,s:d,s:d,s:L,s:d,s:N}",
                         "rx_packets", s.rx_packets, "rx_lost", s.rx_lost, "rx_other_pt", s.rx_other_pt,
                         "rx_jitter_ms_mean", s.rx_jitter_ms_mean, "rx_jitter_ms_max", s.rx_jitter_ms_max,
                         "rx_delay_ms_max", s.rx_delay_ms_max,
                         "tx_packets", s.tx_packets, "tx_errors", s.tx_errors, "late_samples", s.late_samples,
                         "rx_sources", s.rx_sources, "moves", s.moves,
                         "rx_cn", s.rx_cn, "rx_dtmf", s.rx_dtmf, "rx_foreign", s.rx_foreign,
                         "rx_auth_failed", s.rx_auth_failed, "rtcp_tx", s.rtcp_tx, "rtcp_rx", s.rtcp_rx,
                         "rtt_ms_mean", s.rtt_ms_mean, "rtt_ms_max", s.rtt_ms_max,
                         "far_lost", s.far_lost, "far_jitter_ms", s.far_jitter_ms, "dtmf", dtmf);
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
    {"play", (PyCFunction)Engine_play, METH_VARARGS, "play(channel, clip) -> monotonic time the first frame is due"},
    {"dtmf", (PyCFunction)Engine_dtmf, METH_VARARGS,
     "dtmf(channel, digits, duration_ms, gap_ms, volume) -> (start, end) monotonic s of the RFC 4733 events"},
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

/* Decoder(codec): one stream's decoder, for tools that read captures (the referee) */
typedef struct {
    PyObject_HEAD
    int codec;
    rtpe_decoder *dec;
} Decoder;

static int Decoder_init(Decoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"codec", NULL};
    int codec, ok = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i", kwlist, &codec)) return -1;
    if (codec < 0 || codec >= RTPE_NCODECS) { PyErr_Format(PyExc_ValueError, "unknown codec %d", codec); return -1; }
    rtpe_decoder_free(self->dec);
    self->codec = codec;
    self->dec = rtpe_decoder_new(codec, &ok);
    if (!ok) { PyErr_Format(PyExc_OSError, "codec %d: the decoder did not start", codec); return -1; }
    return 0;
}

static void Decoder_dealloc(Decoder *self) {
    rtpe_decoder_free(self->dec);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* decode(payload) -> int16 samples at 8 kHz (bytes), in stream order; b"" if undecodable */
static PyObject *Decoder_decode(Decoder *self, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    int16_t out[2048];
    int n = rtpe_decode(self->codec, self->dec, (const uint8_t *)b.buf, (int)b.len, out, 2048);
    PyBuffer_Release(&b);
    return PyBytes_FromStringAndSize((const char *)out, n > 0 ? (Py_ssize_t)n * 2 : 0);
}

static PyMethodDef Decoder_methods[] = {
    {"decode", (PyCFunction)Decoder_decode, METH_O, "decode(payload) -> int16 samples at 8 kHz, as bytes"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject DecoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "voiceload.media._rtpengine.Decoder",
    .tp_basicsize = sizeof(Decoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "One RTP stream's decoder (the engine's codecs), 8 kHz out: for reading captures",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Decoder_init,
    .tp_dealloc = (destructor)Decoder_dealloc,
    .tp_methods = Decoder_methods,
};

/* encode_clip(codec, int16 samples at 8 kHz) -> (frames, offsets, sizes, decoded): 20 ms frames */
static PyObject *encode_clip(PyObject *mod, PyObject *args) {
    int codec;
    Py_buffer b;
    if (!PyArg_ParseTuple(args, "iy*", &codec, &b)) return NULL;
    size_t n = (size_t)b.len / 2, frames = (n + RTPE_FRAME_SAMPLES - 1) / RTPE_FRAME_SAMPLES;
    if (frames == 0) frames = 1;
    size_t cap = frames * RTPE_MAX_FRAME_BYTES;
    uint8_t *out = malloc(cap);
    uint32_t *offsets = malloc(frames * sizeof(uint32_t));
    uint16_t *sizes = malloc(frames * sizeof(uint16_t));
    int16_t *decoded = malloc(frames * RTPE_FRAME_SAMPLES * sizeof(int16_t));
    PyObject *result = NULL;
    if (!out || !offsets || !sizes || !decoded) { PyErr_NoMemory(); goto done; }
    long used;
    Py_BEGIN_ALLOW_THREADS
    used = rtpe_encode_clip(codec, (const int16_t *)b.buf, n, frames, out, cap, offsets, sizes, decoded);
    Py_END_ALLOW_THREADS
    if (used < 0) { PyErr_Format(PyExc_ValueError, "codec %d: could not encode", codec); goto done; }
    result = Py_BuildValue("(y#y#y#y#)", out, (Py_ssize_t)used, offsets, (Py_ssize_t)(frames * sizeof(uint32_t)),
                           sizes, (Py_ssize_t)(frames * sizeof(uint16_t)),
                           decoded, (Py_ssize_t)(frames * RTPE_FRAME_SAMPLES * sizeof(int16_t)));
done:
    free(out); free(offsets); free(sizes); free(decoded);
    PyBuffer_Release(&b);
    return result;
}

static PyMethodDef module_methods[] = {
    {"encode_pcmu", encode_pcmu, METH_O, "encode_pcmu(int16 samples buffer) -> PCMU bytes (G.711 mu-law)"},
    {"encode_clip", encode_clip, METH_VARARGS,
     "encode_clip(codec, int16 samples buffer) -> (frames, offsets, sizes, decoded) in 20 ms frames"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "voiceload.media._rtpengine",
                                       "voiceload's caller-side RTP engine (see voiceload/media/engine.py)", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__rtpengine(void) {
    rtpe_tables_init();
    if (rtpe_srtp_init() != RTPE_OK) { PyErr_SetString(PyExc_ImportError, "libsrtp2 did not initialise"); return NULL; }
    if (PyType_Ready(&EngineType) < 0 || PyType_Ready(&DecoderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) { Py_DECREF(&EngineType); Py_DECREF(m); return NULL; }
    Py_INCREF(&DecoderType);
    if (PyModule_AddObject(m, "Decoder", (PyObject *)&DecoderType) < 0) { Py_DECREF(&DecoderType); Py_DECREF(m); return NULL; }
    PyModule_AddIntConstant(m, "FRAME_SAMPLES", RTPE_FRAME_SAMPLES);
    PyModule_AddIntConstant(m, "READ_LAG_MS", RTPE_READ_LAG_MS);
    PyModule_AddIntConstant(m, "CLOCK_RATE", RTPE_CLOCK_RATE);
    PyModule_AddIntConstant(m, "PCMU", RTPE_PCMU);
    PyModule_AddIntConstant(m, "PCMA", RTPE_PCMA);
    PyModule_AddIntConstant(m, "G722", RTPE_G722);
    PyModule_AddIntConstant(m, "OPUS", RTPE_OPUS);
    PyModule_AddIntConstant(m, "SRTP_KEY_LEN", RTPE_SRTP_KEY_LEN);
    PyModule_AddIntConstant(m, "OPUS_DELAY", rtpe_codec_delay(RTPE_OPUS));
    return m;
}
