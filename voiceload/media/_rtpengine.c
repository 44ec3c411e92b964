/*
 * voiceload's caller-side RTP engine: one clock thread sends, receives and tapes every call.
 *
 * Why it exists (docs/density.md): a pjmedia call path costs a dense agent 3-6x the CPU of a
 * SIPp UAC (a conference bridge tick per port, a jitter buffer, a receive thread woken per
 * packet, Python polling levels), and its jitter buffer is the error of a turn when it settles
 * deep. A load generator needs none of that: it sends known, pre-encoded frames and must know
 * *when* each frame left and each packet arrived. So, per 20 ms tick and per call, this engine
 *   - drains the call's socket with recvmmsg() every 4th tick (four packets a read: each system
 *     call costs more than a packet's copy), taking each packet's kernel arrival time
 *     (SO_TIMESTAMPNS), so neither a late tick nor the wait for the next read makes a packet look late;
 *   - sends one PCMU frame: the current utterance, or silence (no DTX: a continuous stream);
 *   - keeps the call's tape: a mono 8 kHz 16-bit WAV on the wire's own timeline. Sent audio
 *     sits at its tick's scheduled time (a late tick catches up, below). Received audio sits on
 *     the sender's timeline (its RTP timestamps)
 *     at the smallest transit seen over the last ~2 s, i.e. where the packet would have arrived
 *     with no jitter: contiguous like the sender's audio, never later than the packet arrived,
 *     and earlier only by that packet's own jitter. The tape is flushed in 0.5 s blocks and its
 *     header written on close, so it is bounded in memory.
 * SIP stays with pjsua2; this module only does media. No Python runs on the per-frame path:
 * the clock thread never touches the GIL or a Python object.
 */
#define PY_SSIZE_T_CLEAN
#define _GNU_SOURCE
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RATE 8000
#define FRAME 160                 /* samples (and PCMU bytes) per 20 ms frame */
#define FRAME_NS 20000000LL
#define RING 16384                /* samples of tape held in memory per track (2.048 s), a power of two */
#define RING_MASK (RING - 1)
#define FLUSH_LAG 4000            /* samples kept in memory behind "now": late-read packets still land */
#define FLUSH_CHUNK 4000          /* write the tape in blocks of at least this many samples */
#define SNAP 40                   /* a sent frame within 5 ms of where the last one ended continues it */
#define TRANSIT_EPOCH 50          /* packets per epoch of the received stream's minimum transit (~1 s) */
#define MAX_CATCH_UP 5            /* frames a late tick sends at once to stay on schedule; beyond, ticks are skipped */
#define RX_EVERY 4                /* a channel's socket is drained every this many ticks (channels take turns) */
#define RX_BATCH 8                /* packets per recvmmsg(): RX_EVERY of them wait between reads */
#define PKT_MAX 1500
#define RTP_HDR 12
#define PT_PCMU 0
#define WAV_HDR 44
#define SILENCE 0xFF              /* PCMU's positive zero */

typedef struct {
    int used, running;
    int fd;
    struct sockaddr_in remote;
    int connected;                /* connect()ed to `remote` once it sent from there: sends skip the route lookup */
    uint16_t seq;
    uint32_t ssrc, ts0;
    int64_t tick0;                /* engine tick at start: the RTP timestamp follows the clock, ticks skipped or not */
    int marker;
    /* playback: a bytes object of PCMU held by the Python side until the next play() or close() */
    PyObject *play_obj;
    const uint8_t *play;
    Py_ssize_t play_len, play_pos;
    /* tape, in samples since t0 */
    int tape_fd;
    int64_t t0_ns, flushed, rx_next, tx_next;
    int16_t *rx, *tx;
    /* turn-taking: the level of the last PCMU packet, on pjmedia's bridge scale (0..127), and when
     * (kernel arrival, monotonic ns) the far end was last at least `loud_level` */
    int level;
    int64_t last_loud_ns;
    /* stats */
    uint64_t rx_packets, rx_bytes, rx_other, rx_late, tx_packets, send_errors;
    int have_seq;
    uint16_t max_seq;
    uint32_t cycles, base_seq;
    int64_t last_at;              /* arrival (samples) and RTP timestamp of the last PCMU packet, for jitter */
    uint32_t last_ts;
    int have_transit;
    int64_t ts_ext;               /* the last packet's RTP timestamp, unwrapped */
    int64_t transit_min, transit_prev_min; /* arrival - timestamp: minimum this epoch and the last */
    int transit_n;
    double jitter, jitter_max, jitter_sum;
    uint64_t jitter_n;
} chan_t;

typedef struct {
    PyObject_HEAD
    pthread_t thread;
    pthread_mutex_t lock;
    int thread_started;
    volatile int stop;
    int capacity;
    int loud_level;
    chan_t *ch;
    int64_t ticks;                /* ticks run since the engine started */
    int64_t next_tick_ns;         /* when tick `ticks` is scheduled (monotonic ns) */
    /* health since the last health() call */
    int64_t late_max_ns, busy_ns, busy_max_ns, skipped, n_ticks;
} Engine;

static int16_t ulaw_to_lin[256];

static void init_tables(void) {
    for (int i = 0; i < 256; i++) {
        int u = ~i & 0xFF;
        int t = ((u & 0x0F) << 3) + 0x84;
        t <<= (u & 0x70) >> 4;
        ulaw_to_lin[i] = (int16_t)((u & 0x80) ? (0x84 - t) : (t - 0x84));
    }
}

/* G.711 mu-law encoding of one 16-bit sample (the classic segment search), as pjmedia does it. */
static int lin_to_ulaw(int pcm) {
    static const int seg_end[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
    int mask, seg;
    pcm >>= 2;
    if (pcm < 0) { pcm = -pcm; mask = 0x7F; } else { mask = 0xFF; }
    if (pcm > 8159) pcm = 8159;
    pcm += 0x84 >> 2;
    for (seg = 0; seg < 8 && pcm > seg_end[seg]; seg++) {}
    if (seg >= 8) return 0x7F ^ mask;
    return ((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask;
}

static int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t sample_at(const chan_t *c, int64_t mono_ns) {
    return (mono_ns - c->t0_ns) * RATE / 1000000000LL;
}

/* Write tape samples [flushed, upto) (received + sent, saturated) and clear them from the rings. */
static void flush_to(chan_t *c, int64_t upto) {
    int16_t buf[FLUSH_CHUNK];
    while (c->flushed < upto) {
        int64_t n = upto - c->flushed;
        if (n > FLUSH_CHUNK) n = FLUSH_CHUNK;
        int64_t k0 = c->flushed & RING_MASK;
        if (n > RING - k0) n = RING - k0;  /* one contiguous piece of the ring at a time: the loop vectorises */
        const int16_t *rx = c->rx + k0, *tx = c->tx + k0;
        for (int64_t i = 0; i < n; i++) {
            int v = rx[i] + tx[i];
            buf[i] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
        }
        memset(c->rx + k0, 0, (size_t)n * sizeof(int16_t));
        memset(c->tx + k0, 0, (size_t)n * sizeof(int16_t));
        if (c->tape_fd >= 0) {
            ssize_t w = write(c->tape_fd, buf, (size_t)n * 2);
            (void)w; /* a full tmpfs loses the tape, not the call: the analysis then finds no audio */
        }
        c->flushed += n;
    }
}

/* Put one decoded frame on a track at sample `at`, which is >= flushed - FRAME. */
/* Put n PCMU samples on a track at sample `at`, decoded; returns the sum of their magnitudes. */
static long place(chan_t *c, int16_t *track, int64_t at, const uint8_t *pcmu, int n, uint64_t *late) {
    if (at + n - c->flushed > RING) flush_to(c, at + n - RING);
    int skip = 0;  /* samples before the tape started (early RTP), or read after their block was written */
    if (at < c->flushed) {
        skip = at + n <= c->flushed ? n : (int)(c->flushed - at);
        int64_t counted = (at + skip) - (at > 0 ? at : 0);  /* only those at or after sample 0 are late */
        if (counted > 0) *late += (uint64_t)counted;
    }
    long sum = 0;
    for (int i = skip; i < n; i++) {
        int v = ulaw_to_lin[pcmu[i]];
        track[(at + i) & RING_MASK] = (int16_t)v;
        sum += v < 0 ? -v : v;
    }
    return sum;
}

/* Where a sent frame goes: right after the last one when it is due about then, else at its own
 * time (ticks were skipped). */
static int64_t continue_or_jump(int64_t next, int64_t at) {
    return (next > 0 && at >= next - SNAP && at <= next + SNAP) ? next : at;
}

static void rx_packet(chan_t *c, const uint8_t *p, ssize_t len, int64_t arrival_mono, int loud_level) {
    if (len < RTP_HDR || (p[0] >> 6) != 2) return;
    if (p[1] >= 192 && p[1] <= 223) return;  /* RTCP (RFC 5761): a far end's reports sent to our port */
    int cc = p[0] & 0x0F, has_ext = p[0] & 0x10, has_pad = p[0] & 0x20;
    int pt = p[1] & 0x7F;
    uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
    uint32_t ts = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    ssize_t off = RTP_HDR + 4 * cc;
    if (has_ext) {
        if (off + 4 > len) return;
        off += 4 + 4 * ((p[off + 2] << 8) | p[off + 3]);
    }
    ssize_t end = len;
    if (has_pad && len > 0) end -= p[len - 1];
    if (off > end) return;
    c->rx_packets++;
    c->rx_bytes += (uint64_t)(end - off);
    /* RFC 3550 A.1 sequence bookkeeping (for loss) and A.8 interarrival jitter */
    if (!c->have_seq) {
        c->have_seq = 1;
        c->base_seq = seq;
        c->max_seq = seq;
    } else {
        uint16_t delta = (uint16_t)(seq - c->max_seq);
        if (delta < 0x8000 && delta != 0) {
            if (seq < c->max_seq) c->cycles += 0x10000;
            c->max_seq = seq;
        }
    }
    if (pt != PT_PCMU) { c->rx_other++; return; }
    int64_t at = sample_at(c, arrival_mono);
    c->ts_ext = c->have_transit ? c->ts_ext + (int32_t)(ts - c->last_ts) : (int64_t)ts;
    int64_t transit = at - c->ts_ext;
    if (!c->have_transit || transit < c->transit_min) c->transit_min = transit;
    if (!c->have_transit) c->transit_prev_min = transit;
    if (++c->transit_n >= TRANSIT_EPOCH) {  /* forget older epochs: a sender's clock may drift or jump */
        c->transit_prev_min = c->transit_min;
        c->transit_min = transit;
        c->transit_n = 0;
    }
    if (c->have_transit) {  /* difference of transit times; the signed 32-bit step survives a timestamp wrap */
        int64_t d = (at - c->last_at) - (int64_t)(int32_t)(ts - c->last_ts);
        if (d < 0) d = -d;
        c->jitter += ((double)d - c->jitter) / 16.0;
        if (c->jitter > c->jitter_max) c->jitter_max = c->jitter;
        c->jitter_sum += c->jitter;
        c->jitter_n++;
    }
    c->last_at = at;
    c->last_ts = ts;
    c->have_transit = 1;
    int n = (int)(end - off);
    if (n <= 0) return;
    if (n > RING / 2) n = RING / 2;
    int64_t anchor = c->transit_min < c->transit_prev_min ? c->transit_min : c->transit_prev_min;
    int64_t pos = c->ts_ext + anchor;
    long sum = place(c, c->rx, pos, p + off, n, &c->rx_late);
    if (pos + n > c->rx_next) c->rx_next = pos + n;
    c->level = lin_to_ulaw((int)(sum / n)) ^ 0xFF;
    if (c->level >= loud_level) c->last_loud_ns = arrival_mono;
}

/* A far end that sends from the address it advertised gets a connected socket: the kernel then
 * skips a route lookup per send (about 9 % of the packet path, measured). One that sends from
 * elsewhere (asymmetric RTP) never matches, so its socket stays open to every source. */
static void maybe_connect(chan_t *c, const struct sockaddr_in *from) {
    if (c->connected || from->sin_family != AF_INET || from->sin_port != c->remote.sin_port ||
        from->sin_addr.s_addr != c->remote.sin_addr.s_addr)
        return;
    if (connect(c->fd, (const struct sockaddr *)&c->remote, sizeof c->remote) == 0) c->connected = 1;
}

static void rx_drain(chan_t *c, int64_t mono_minus_real, int loud_level) {
    uint8_t bufs[RX_BATCH][PKT_MAX];
    char ctl[RX_BATCH][CMSG_SPACE(sizeof(struct timespec))];
    struct sockaddr_in from[RX_BATCH];
    struct iovec iov[RX_BATCH];
    struct mmsghdr msgs[RX_BATCH];
    for (;;) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < RX_BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = PKT_MAX;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
            if (!c->connected) {
                msgs[i].msg_hdr.msg_name = &from[i];
                msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            }
        }
        int n = recvmmsg(c->fd, msgs, RX_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        int64_t fallback = now_ns(CLOCK_MONOTONIC);
        for (int i = 0; i < n; i++) {
            int64_t arrival = fallback;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm; cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                    arrival = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec + mono_minus_real;
                }
            }
            rx_packet(c, bufs[i], (ssize_t)msgs[i].msg_len, arrival, loud_level);
            if (!c->connected && msgs[i].msg_hdr.msg_namelen >= sizeof from[i]) maybe_connect(c, &from[i]);
        }
        if (n < RX_BATCH) return;
    }
}

/* Send the frame of tick `tick`, scheduled at `sched` (monotonic ns), and tape it at `sched`: an
 * utterance stays whole on the tape and ends where the schedule put it on the wire. The real send
 * is later by the wake-up's lateness (reported by health(), and a run is invalid past 40 ms) and
 * by the channel's turn within the wake-up (busy_max_ms in health(): about 4 us per channel). */
static void tx_frame(chan_t *c, int64_t tick, int64_t sched) {
    uint8_t pkt[RTP_HDR + FRAME];
    uint8_t *pay = pkt + RTP_HDR;
    int playing = c->play != NULL && c->play_pos < c->play_len;
    if (playing) {
        Py_ssize_t n = c->play_len - c->play_pos;
        if (n > FRAME) n = FRAME;
        memcpy(pay, c->play + c->play_pos, (size_t)n);
        if (n < FRAME) memset(pay + n, SILENCE, (size_t)(FRAME - n));
        c->play_pos += n;
    } else {
        memset(pay, SILENCE, FRAME);
    }
    uint32_t ts = c->ts0 + (uint32_t)((tick - c->tick0) * FRAME);
    pkt[0] = 0x80;
    pkt[1] = (uint8_t)(PT_PCMU | (c->marker ? 0x80 : 0));
    c->marker = 0;
    pkt[2] = (uint8_t)(c->seq >> 8);
    pkt[3] = (uint8_t)c->seq;
    pkt[4] = (uint8_t)(ts >> 24); pkt[5] = (uint8_t)(ts >> 16); pkt[6] = (uint8_t)(ts >> 8); pkt[7] = (uint8_t)ts;
    pkt[8] = (uint8_t)(c->ssrc >> 24); pkt[9] = (uint8_t)(c->ssrc >> 16);
    pkt[10] = (uint8_t)(c->ssrc >> 8); pkt[11] = (uint8_t)c->ssrc;
    c->seq++;
    ssize_t sent = c->connected ? send(c->fd, pkt, sizeof pkt, 0)
                                : sendto(c->fd, pkt, sizeof pkt, 0, (struct sockaddr *)&c->remote, sizeof c->remote);
    if (sent < 0) c->send_errors++;
    else c->tx_packets++;
    int64_t pos = continue_or_jump(c->tx_next, sample_at(c, sched));
    if (playing) place(c, c->tx, pos, pay, FRAME, &c->rx_late);
    c->tx_next = pos + FRAME;
}

/* One wake-up of the clock for one channel: read what arrived, send the frames due, write the tape. */
static void service(Engine *e, chan_t *c, int64_t tick, int64_t sched, int frames, int64_t woke,
                    int64_t mono_minus_real) {
    if ((tick + (c - e->ch)) % RX_EVERY == 0 || frames > 1) rx_drain(c, mono_minus_real, e->loud_level);
    for (int k = 0; k < frames; k++) tx_frame(c, tick + k, sched + k * FRAME_NS);
    int64_t safe = sample_at(c, woke) - FLUSH_LAG;
    if (safe - c->flushed >= FLUSH_CHUNK) flush_to(c, safe);
}

#define CLOCK_NICE (-10)

static void *clock_main(void *arg) {
    Engine *e = (Engine *)arg;
    /* a tick that waits for a core behind Python work sends every call's frame late: run ahead of
     * Python when allowed (root or CAP_SYS_NICE; otherwise this changes nothing) */
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), CLOCK_NICE);
    int64_t next = e->next_tick_ns - FRAME_NS;  /* set before the thread started: start() may come first */
    while (!e->stop) {
        next += FRAME_NS;
        struct timespec ts = {(time_t)(next / 1000000000LL), (long)(next % 1000000000LL)};
        while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {}
        int64_t woke = now_ns(CLOCK_MONOTONIC);
        int64_t mono_minus_real = woke - now_ns(CLOCK_REALTIME);
        pthread_mutex_lock(&e->lock);
        int running = 0;
        for (int i = 0; i < e->capacity; i++) running += e->ch[i].running;
        int64_t late = woke - next;
        if (running && late > e->late_max_ns) e->late_max_ns = late;  /* with no call, lateness harms nothing */
        /* ticks due now: this one and any a late wake-up missed (sent at once, up to MAX_CATCH_UP) */
        int64_t due = 1 + late / FRAME_NS;
        if (due > MAX_CATCH_UP) {
            int64_t skip = due - MAX_CATCH_UP;
            if (running) e->skipped += skip;
            e->ticks += skip;
            next += skip * FRAME_NS;
            due = MAX_CATCH_UP;
        }
        int64_t first = e->ticks;
        for (int i = 0; i < e->capacity; i++) {
            chan_t *c = &e->ch[i];
            if (!c->running) continue;
            /* a channel started after this wake-up's first due tick sends from its own start on */
            int64_t from = c->tick0 > first ? c->tick0 : first;
            if (from < first + due)
                service(e, c, from, next + (from - first) * FRAME_NS, (int)(first + due - from), woke, mono_minus_real);
        }
        e->ticks += due;
        next += (due - 1) * FRAME_NS;
        e->next_tick_ns = next + FRAME_NS;
        e->n_ticks++;
        int64_t busy = now_ns(CLOCK_MONOTONIC) - woke;
        e->busy_ns += busy;
        if (busy > e->busy_max_ns) e->busy_max_ns = busy;
        pthread_mutex_unlock(&e->lock);
    }
    return NULL;
}

/* ---------------------------------------------------------------- Python side */

/* The engine's lock is only ever held without the GIL: an API call lets the GIL go, takes the lock,
 * does C work only, drops the lock and takes the GIL back. Taking the GIL back while holding the lock
 * would make the clock thread wait for whatever Python thread holds the GIL (seen: ticks 48 ms late
 * while the tape worker ran numpy). Nothing between BEGIN and END may touch a Python object. */
#define ENGINE_LOCKED_BEGIN(e) { PyThreadState *save_ = PyEval_SaveThread(); pthread_mutex_lock(&(e)->lock);
#define ENGINE_LOCKED_END(e) pthread_mutex_unlock(&(e)->lock); PyEval_RestoreThread(save_); }

/* The open channel `i`, or NULL (no Python error set: the caller raises once it has the GIL). */
static chan_t *find_chan(Engine *e, int i) {
    return (i >= 0 && i < e->capacity && e->ch[i].used) ? &e->ch[i] : NULL;
}

/* Give the channel a new recording to play (NULL: none), under the lock. The channel owns one
 * reference to its bytes object; the old one is returned for the caller to release with the GIL. */
static PyObject *swap_play(chan_t *c, PyObject *data) {
    PyObject *old = c->play_obj;
    c->play_obj = data;
    c->play = data ? (const uint8_t *)PyBytes_AS_STRING(data) : NULL;  /* inline field reads: no GIL needed */
    c->play_len = data ? PyBytes_GET_SIZE(data) : 0;
    c->play_pos = 0;
    return old;
}

static PyObject *no_chan(int i) {
    return PyErr_Format(PyExc_ValueError, "no open media channel %d", i);
}

static void write_wav_header(int fd, uint32_t samples) {
    uint8_t h[WAV_HDR];
    uint32_t data = samples * 2, riff = 36 + data;
    memcpy(h, "RIFF", 4);
    memcpy(h + 4, &riff, 4);
    memcpy(h + 8, "WAVEfmt ", 8);
    uint32_t fmt_len = 16, rate = RATE, byte_rate = RATE * 2;
    uint16_t pcm = 1, mono = 1, align = 2, bits = 16;
    memcpy(h + 16, &fmt_len, 4);
    memcpy(h + 20, &pcm, 2);
    memcpy(h + 22, &mono, 2);
    memcpy(h + 24, &rate, 4);
    memcpy(h + 28, &byte_rate, 4);
    memcpy(h + 32, &align, 2);
    memcpy(h + 34, &bits, 2);
    memcpy(h + 36, "data", 4);
    memcpy(h + 40, &data, 4);
    ssize_t w = pwrite(fd, h, sizeof h, 0);
    (void)w;
}

static int Engine_init(Engine *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"capacity", "loud_level", NULL};
    int capacity = 1024, loud_level = 5;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|ii", kwlist, &capacity, &loud_level)) return -1;
    if (capacity < 1 || capacity > 65536) {
        PyErr_SetString(PyExc_ValueError, "capacity must be 1..65536");
        return -1;
    }
    self->capacity = capacity;
    self->loud_level = loud_level;
    self->ch = calloc((size_t)capacity, sizeof(chan_t));
    if (!self->ch) { PyErr_NoMemory(); return -1; }
    for (int i = 0; i < capacity; i++) { self->ch[i].fd = -1; self->ch[i].tape_fd = -1; }
    pthread_mutex_init(&self->lock, NULL);
    self->next_tick_ns = now_ns(CLOCK_MONOTONIC) + FRAME_NS;
    if (pthread_create(&self->thread, NULL, clock_main, self) != 0) {
        PyErr_SetString(PyExc_OSError, "could not start the media clock thread");
        return -1;
    }
    self->thread_started = 1;
    return 0;
}

static void close_chan(chan_t *c) {
    if (c->running) {
        int64_t end = c->rx_next > c->tx_next ? c->rx_next : c->tx_next;
        flush_to(c, end);
        c->running = 0;
    }
    if (c->tape_fd >= 0) {
        write_wav_header(c->tape_fd, (uint32_t)c->flushed);
        close(c->tape_fd);
        c->tape_fd = -1;
    }
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    free(c->rx); free(c->tx);
    c->rx = c->tx = NULL;
    c->used = 0;
}

static PyObject *Engine_shutdown(Engine *self, PyObject *unused) {
    if (self->thread_started) {
        self->stop = 1;
        Py_BEGIN_ALLOW_THREADS
        pthread_join(self->thread, NULL);
        Py_END_ALLOW_THREADS
        self->thread_started = 0;
    }
    for (int i = 0; self->ch && i < self->capacity; i++) {
        if (self->ch[i].used) close_chan(&self->ch[i]);
        Py_CLEAR(self->ch[i].play_obj);
    }
    Py_RETURN_NONE;
}

static void Engine_dealloc(Engine *self) {
    PyObject *r = Engine_shutdown(self, NULL);
    Py_XDECREF(r);
    free(self->ch);
    self->ch = NULL;
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* open(host) -> (channel, port): a socket bound to host on a free port, nothing sent yet */
static PyObject *Engine_open(Engine *self, PyObject *args) {
    const char *host;
    if (!PyArg_ParseTuple(args, "s", &host)) return NULL;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    if (inet_pton(AF_INET, host, &a.sin_addr) != 1) return PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return PyErr_SetFromErrno(PyExc_OSError);
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        close(fd);
        return NULL;
    }
    socklen_t alen = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    int slot = -1;
    ENGINE_LOCKED_BEGIN(self)
    for (int i = 0; i < self->capacity; i++) if (!self->ch[i].used) { slot = i; break; }
    if (slot >= 0) {
        chan_t *c = &self->ch[slot];
        memset(c, 0, sizeof *c);  /* play_obj too: close() released it */
        c->used = 1;
        c->fd = fd;
        c->tape_fd = -1;
    }
    ENGINE_LOCKED_END(self)
    if (slot < 0) {
        close(fd);
        return PyErr_Format(PyExc_OSError, "all %d media channels in use", self->capacity);
    }
    return Py_BuildValue("(ii)", slot, (int)ntohs(a.sin_port));
}

/* start(channel, remote_host, remote_port, tape_path or None, ssrc) -> tape start (monotonic s) */
static PyObject *Engine_start(Engine *self, PyObject *args) {
    int i, port;
    unsigned int ssrc;
    const char *host;
    PyObject *path_obj;
    if (!PyArg_ParseTuple(args, "isiOI", &i, &host, &port, &path_obj, &ssrc)) return NULL;
    struct sockaddr_in r;
    memset(&r, 0, sizeof r);
    r.sin_family = AF_INET;
    r.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &r.sin_addr) != 1) return PyErr_Format(PyExc_ValueError, "not an IPv4 address: %s", host);
    int tape_fd = -1;
    if (path_obj != Py_None) {
        PyObject *bytes = NULL;
        if (!PyUnicode_FSConverter(path_obj, &bytes)) return NULL;
        tape_fd = open(PyBytes_AS_STRING(bytes), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (tape_fd < 0) {
            PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
            Py_DECREF(bytes);
            return NULL;
        }
        Py_DECREF(bytes);
        write_wav_header(tape_fd, 0);
        lseek(tape_fd, WAV_HDR, SEEK_SET);
    }
    int16_t *rx = calloc(RING, sizeof(int16_t)), *tx = calloc(RING, sizeof(int16_t));
    if (!rx || !tx) { free(rx); free(tx); if (tape_fd >= 0) close(tape_fd); return PyErr_NoMemory(); }
    int state = 0;  /* 0 started, 1 not open, 2 already started */
    double t0 = 0.0;
    ENGINE_LOCKED_BEGIN(self)
    chan_t *c = find_chan(self, i);
    if (c == NULL) state = 1;
    else if (c->running) state = 2;
    else {
        c->remote = r;
        c->ssrc = ssrc;
        c->seq = (uint16_t)(ssrc >> 7);
        c->ts0 = ssrc * 2654435761u;
        c->tick0 = self->ticks;
        c->marker = 1;
        c->tape_fd = tape_fd;
        c->rx = rx;
        c->tx = tx;
        /* sample 0 no later than the first tick's scheduled time: a tick already due (its wake-up
         * waiting for this lock) is scheduled before now, and its frame would fall off the tape */
        int64_t now = now_ns(CLOCK_MONOTONIC);
        c->t0_ns = self->next_tick_ns < now ? self->next_tick_ns : now;
        c->running = 1;
        t0 = (double)c->t0_ns / 1e9;
    }
    ENGINE_LOCKED_END(self)
    if (state != 0) {
        free(rx); free(tx);
        if (tape_fd >= 0) close(tape_fd);
        return state == 1 ? no_chan(i) : PyErr_Format(PyExc_ValueError, "media channel %d already started", i);
    }
    return PyFloat_FromDouble(t0);
}

/* play(channel, pcmu: bytes) -> monotonic time (s) the first frame goes out (the next tick, about) */
static PyObject *Engine_play(Engine *self, PyObject *args) {
    int i;
    PyObject *data;
    if (!PyArg_ParseTuple(args, "iS", &i, &data)) return NULL;
    Py_INCREF(data);
    PyObject *old = NULL;
    int found = 0;
    ENGINE_LOCKED_BEGIN(self)
    chan_t *c = find_chan(self, i);
    if (c != NULL) {
        found = 1;
        old = swap_play(c, data);
    }
    ENGINE_LOCKED_END(self)
    if (!found) { Py_DECREF(data); return no_chan(i); }
    Py_XDECREF(old);
    return PyFloat_FromDouble((double)now_ns(CLOCK_MONOTONIC) / 1e9);
}

/* last_loud(channel) -> monotonic time (s) the far end was last loud; 0.0 if never */
static PyObject *Engine_last_loud(Engine *self, PyObject *arg) {
    long i = PyLong_AsLong(arg);
    if (i == -1 && PyErr_Occurred()) return NULL;
    if (i < 0 || i >= self->capacity) return PyErr_Format(PyExc_ValueError, "no media channel %ld", i);
    return PyFloat_FromDouble((double)self->ch[i].last_loud_ns / 1e9);  /* a 64-bit aligned read */
}

/* close(channel) -> RTP stats; flushes the tape and writes its WAV header */
static PyObject *Engine_close(Engine *self, PyObject *args) {
    int i;
    if (!PyArg_ParseTuple(args, "i", &i)) return NULL;
    PyObject *old = NULL;
    int found = 0;
    long long lost = 0;
    double jmean = 0.0, jmax = 0.0;
    unsigned long long rxp = 0, txp = 0, other = 0, late = 0, errs = 0;
    ENGINE_LOCKED_BEGIN(self)
    chan_t *c = find_chan(self, i);
    if (c != NULL) {
        found = 1;
        old = swap_play(c, NULL);
        if (c->running) rx_drain(c, now_ns(CLOCK_MONOTONIC) - now_ns(CLOCK_REALTIME), self->loud_level);  /* the last reads */
        uint32_t expected = c->have_seq ? c->cycles + c->max_seq - c->base_seq + 1 : 0;
        lost = (long long)expected - (long long)c->rx_packets;
        jmean = c->jitter_n ? c->jitter_sum / (double)c->jitter_n : 0.0;
        jmax = c->jitter_max;
        rxp = c->rx_packets; txp = c->tx_packets; other = c->rx_other; late = c->rx_late; errs = c->send_errors;
        close_chan(c);
    }
    ENGINE_LOCKED_END(self)
    if (!found) return no_chan(i);
    Py_XDECREF(old);
    return Py_BuildValue("{s:K,s:L,s:K,s:d,s:d,s:K,s:K,s:K}",
                         "rx_packets", rxp, "rx_lost", lost < 0 ? 0LL : lost, "rx_other_pt", other,
                         "rx_jitter_ms_mean", jmean / 8.0, "rx_jitter_ms_max", jmax / 8.0,
                         "tx_packets", txp, "tx_errors", errs, "late_samples", late);
}

/* health() -> the clock's lateness and load since the previous call */
static PyObject *Engine_health(Engine *self, PyObject *unused) {
    int64_t late, busy, busy_max, skipped, n;
    int running = 0;
    ENGINE_LOCKED_BEGIN(self)
    late = self->late_max_ns; busy = self->busy_ns; busy_max = self->busy_max_ns;
    skipped = self->skipped; n = self->n_ticks;
    for (int i = 0; i < self->capacity; i++) running += self->ch[i].running;
    self->late_max_ns = self->busy_ns = self->busy_max_ns = self->skipped = self->n_ticks = 0;
    ENGINE_LOCKED_END(self)
    return Py_BuildValue("{s:d,s:d,s:d,s:L,s:L,s:i}", "late_max_ms", (double)late / 1e6,
                         "busy_mean_ms", n ? (double)busy / (double)n / 1e6 : 0.0, "busy_max_ms", (double)busy_max / 1e6,
                         "skipped_ticks", (long long)skipped, "ticks", (long long)n, "running", running);
}

static PyMethodDef Engine_methods[] = {
    {"open", (PyCFunction)Engine_open, METH_VARARGS, "open(host) -> (channel, port): bind a call's RTP socket"},
    {"start", (PyCFunction)Engine_start, METH_VARARGS,
     "start(channel, remote_host, remote_port, tape_path, ssrc) -> tape start, monotonic seconds"},
    {"play", (PyCFunction)Engine_play, METH_VARARGS, "play(channel, pcmu) -> monotonic time the first frame goes out"},
    {"last_loud", (PyCFunction)Engine_last_loud, METH_O,
     "last_loud(channel) -> monotonic time (s) the far end was last at least loud_level; 0.0 if never"},
    {"close", (PyCFunction)Engine_close, METH_VARARGS, "close(channel) -> RTP stats; completes the tape"},
    {"health", (PyCFunction)Engine_health, METH_NOARGS, "health() -> clock lateness and load since the last call"},
    {"shutdown", (PyCFunction)Engine_shutdown, METH_NOARGS, "stop the clock thread and close every channel"},
    {NULL, NULL, 0, NULL}};

static PyTypeObject EngineType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "voiceload._rtpengine.Engine",
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
    if (out) {
        const int16_t *s = (const int16_t *)b.buf;
        uint8_t *o = (uint8_t *)PyBytes_AS_STRING(out);
        for (Py_ssize_t i = 0; i < n; i++) o[i] = (uint8_t)lin_to_ulaw(s[i]);
    }
    PyBuffer_Release(&b);
    return out;
}

static PyMethodDef module_methods[] = {
    {"encode_pcmu", encode_pcmu, METH_O, "encode_pcmu(int16 samples buffer) -> PCMU bytes (G.711 mu-law)"},
    {NULL, NULL, 0, NULL}};

static struct PyModuleDef moduledef = {PyModuleDef_HEAD_INIT, "voiceload._rtpengine",
                                       "voiceload's caller-side RTP engine (see voiceload/media.py)", -1,
                                       module_methods};

PyMODINIT_FUNC PyInit__rtpengine(void) {
    init_tables();
    if (PyType_Ready(&EngineType) < 0) return NULL;
    PyObject *m = PyModule_Create(&moduledef);
    if (!m) return NULL;
    Py_INCREF(&EngineType);
    if (PyModule_AddObject(m, "Engine", (PyObject *)&EngineType) < 0) { Py_DECREF(&EngineType); Py_DECREF(m); return NULL; }
    PyModule_AddIntConstant(m, "FRAME_SAMPLES", FRAME);
    PyModule_AddIntConstant(m, "READ_LAG_MS", RX_EVERY * (FRAME_NS / 1000000));
    PyModule_AddIntConstant(m, "CLOCK_RATE", RATE);
    return m;
}
