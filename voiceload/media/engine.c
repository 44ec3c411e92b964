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
 * SIP stays with pjsua2; this engine only does media. It is plain C (engine.h: its API and
 * threading rules); module.c makes it the CPython module voiceload.media._rtpengine. No Python
 * runs on the per-frame path: the clock thread never touches the GIL or a Python object.
 */
#define _GNU_SOURCE
#include "engine.h"

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

#define RATE RTPE_CLOCK_RATE
#define FRAME RTPE_FRAME_SAMPLES  /* samples (and PCMU bytes) per 20 ms frame */
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
#define RESYNC (RATE)             /* a packet taped this many samples (1 s) before its arrival: a new timeline */

_Static_assert(RTPE_READ_LAG_MS == RX_EVERY * (FRAME_NS / 1000000), "engine.h's read lag is RX_EVERY ticks");

struct rtpe_chan {
    int used, running;
    int fd;
    struct sockaddr_in remote;
    int connected;                /* connect()ed to `remote` once it sent from there: sends skip the route lookup */
    int bound_any;                /* bound to 0.0.0.0: never connected (see maybe_connect) */
    int sending;                  /* 0 while the far end holds the call (sendonly, inactive, c=0.0.0.0) */
    uint32_t moves;               /* times rtpe_set_remote moved the channel to another address */
    uint16_t seq;
    uint32_t ssrc, ts0;
    int64_t tick0;                /* engine tick at start: the RTP timestamp follows the clock, ticks skipped or not */
    int marker;
    /* playback: PCMU bytes the caller keeps valid (through `play_owner`) until the next play or close */
    void *play_owner;
    const uint8_t *play;
    size_t play_len, play_pos;
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
    /* the far end's current source (SSRC): a new one starts new sequence and timeline bookkeeping */
    int have_ssrc;
    uint32_t rx_ssrc, rx_sources;
    uint64_t src_packets;         /* packets of the current source */
    long long lost_done;          /* packets lost by the sources before it */
    int64_t last_at;              /* arrival (samples) and RTP timestamp of the last PCMU packet, for jitter */
    uint32_t last_ts;
    int have_transit;
    int64_t ts_ext;               /* the last packet's RTP timestamp, unwrapped */
    int64_t transit_min, transit_prev_min; /* arrival - timestamp: minimum this epoch and the last */
    int transit_n;
    double jitter, jitter_max, jitter_sum;
    uint64_t jitter_n;
    int64_t delay_max;            /* samples a packet arrived after the anchor's timeline: how far
                                   * ahead of its arrival the tape placed it (the smoothed jitter
                                   * above understates one late packet by up to 16x) */
};

/* G.711 µ-law, the engine's own coder: C, so the clock thread never calls out for it. Its numpy
 * twin is voiceload/audio/g711.py (for everything outside the engine); tests/test_g711.py checks
 * the two equal on every int16. */
static int16_t ulaw_to_lin[256];

void rtpe_tables_init(void) {
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

static int64_t sample_at(const rtpe_chan *c, int64_t mono_ns) {
    return (mono_ns - c->t0_ns) * RATE / 1000000000LL;
}

/* Write tape samples [flushed, upto) (received + sent, saturated) and clear them from the rings. */
static void flush_to(rtpe_chan *c, int64_t upto) {
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
static long place(rtpe_chan *c, int16_t *track, int64_t at, const uint8_t *pcmu, int n, uint64_t *late) {
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

/* The received stream's anchor: the smallest transit (arrival - RTP timestamp, in samples) of this
 * epoch and the last, i.e. where a packet would have arrived with no jitter. */
static int64_t anchor_of(const rtpe_chan *c) {
    return c->transit_min < c->transit_prev_min ? c->transit_min : c->transit_prev_min;
}

/* Forget the received stream's anchor: its next packet sets a new one. For a new path or a new
 * sender timeline, where the old minimum transit means nothing (it would tape the new packets
 * far from their arrival, and count that distance as jitter and delay). */
static void reanchor(rtpe_chan *c) {
    c->have_transit = 0;
    c->transit_n = 0;
}

/* Packets of the current source that never arrived (RFC 3550 A.3), 0 before its first. */
static long long source_lost(const rtpe_chan *c) {
    if (!c->have_seq) return 0;
    long long expected = (long long)c->cycles + c->max_seq - c->base_seq + 1;
    long long lost = expected - (long long)c->src_packets;
    return lost < 0 ? 0 : lost;
}

/* A packet of another SSRC: the far end switched its source (early media from one box and the
 * answered call from another, a re-INVITE to a new media server). Sequence numbers and timestamps
 * start afresh: the old source's losses are kept, its anchor is dropped. */
static void new_source(rtpe_chan *c, uint32_t ssrc) {
    if (c->have_ssrc) c->lost_done += source_lost(c);
    c->have_ssrc = 1;
    c->rx_ssrc = ssrc;
    c->rx_sources++;
    c->have_seq = 0;
    c->cycles = 0;
    c->src_packets = 0;
    reanchor(c);
}

static void rx_packet(rtpe_chan *c, const uint8_t *p, ssize_t len, int64_t arrival_mono, int loud_level) {
    if (len < RTP_HDR || (p[0] >> 6) != 2) return;
    if (p[1] >= 192 && p[1] <= 223) return;  /* RTCP (RFC 5761): a far end's reports sent to our port */
    int cc = p[0] & 0x0F, has_ext = p[0] & 0x10, has_pad = p[0] & 0x20;
    int pt = p[1] & 0x7F;
    uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
    uint32_t ts = ((uint32_t)p[4] << 24) | ((uint32_t)p[5] << 16) | ((uint32_t)p[6] << 8) | p[7];
    uint32_t ssrc = ((uint32_t)p[8] << 24) | ((uint32_t)p[9] << 16) | ((uint32_t)p[10] << 8) | p[11];
    ssize_t off = RTP_HDR + 4 * cc;
    if (has_ext) {
        if (off + 4 > len) return;
        off += 4 + 4 * ((p[off + 2] << 8) | p[off + 3]);
    }
    ssize_t end = len;
    if (has_pad && len > 0) end -= p[len - 1];
    if (off > end) return;
    if (!c->have_ssrc || ssrc != c->rx_ssrc) new_source(c, ssrc);
    c->rx_packets++;
    c->src_packets++;
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
    if (c->have_transit && transit - anchor_of(c) > RESYNC) {
        /* the sender's timeline stepped back (a timestamp base reset without a new SSRC, or a
         * timestamp that stood still through a pause): the old anchor would tape this and the
         * following packets that far before their arrival, most of them onto tape already written */
        reanchor(c);
        c->ts_ext = (int64_t)ts;
        transit = at - c->ts_ext;
    }
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
    int64_t anchor = anchor_of(c);
    int64_t pos = c->ts_ext + anchor;
    if (transit - anchor > c->delay_max) c->delay_max = transit - anchor;
    long sum = place(c, c->rx, pos, p + off, n, &c->rx_late);
    if (pos + n > c->rx_next) c->rx_next = pos + n;
    c->level = lin_to_ulaw((int)(sum / n)) ^ 0xFF;
    if (c->level >= loud_level) c->last_loud_ns = arrival_mono;
}

/* A far end that sends from the address it advertised gets a connected socket: the kernel then
 * skips a route lookup per send (about 9 % of the packet path, measured). One that sends from
 * elsewhere (asymmetric RTP) never matches, so its socket stays open to every source. A socket
 * bound to every address is left alone: connect() would fix its local address to the route's
 * source, and packets to another of our addresses (the advertised one, --advertise) would then
 * no longer reach it. */
static void maybe_connect(rtpe_chan *c, const struct sockaddr_in *from) {
    if (c->connected || c->bound_any || from->sin_family != AF_INET || from->sin_port != c->remote.sin_port ||
        from->sin_addr.s_addr != c->remote.sin_addr.s_addr)
        return;
    if (connect(c->fd, (const struct sockaddr *)&c->remote, sizeof c->remote) == 0) c->connected = 1;
}

static void rx_drain(rtpe_chan *c, int64_t mono_minus_real, int loud_level) {
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
static void tx_frame(rtpe_chan *c, int64_t tick, int64_t sched) {
    uint8_t pkt[RTP_HDR + FRAME];
    uint8_t *pay = pkt + RTP_HDR;
    int playing = c->play != NULL && c->play_pos < c->play_len;
    if (!c->sending) {
        /* held: nothing goes out and nothing is taped (the tape is the wire), but time passes for
         * what is playing; the first packet after the hold starts a talkspurt */
        if (playing) c->play_pos = c->play_pos + FRAME < c->play_len ? c->play_pos + FRAME : c->play_len;
        c->marker = 1;
        return;
    }
    if (playing) {
        size_t n = c->play_len - c->play_pos;
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
static void service(rtpe_engine *e, rtpe_chan *c, int64_t tick, int64_t sched, int frames, int64_t woke,
                    int64_t mono_minus_real) {
    if ((tick + (c - e->ch)) % RX_EVERY == 0 || frames > 1) rx_drain(c, mono_minus_real, e->loud_level);
    for (int k = 0; k < frames; k++) tx_frame(c, tick + k, sched + k * FRAME_NS);
    int64_t safe = sample_at(c, woke) - FLUSH_LAG;
    if (safe - c->flushed >= FLUSH_CHUNK) flush_to(c, safe);
}

#define CLOCK_NICE (-10)

static void *clock_main(void *arg) {
    rtpe_engine *e = (rtpe_engine *)arg;
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
            rtpe_chan *c = &e->ch[i];
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


/* ---------------------------------------------------------------- the API (engine.h) */

/* The open channel `i`, or NULL. */
static rtpe_chan *find_chan(rtpe_engine *e, int i) {
    return (i >= 0 && i < e->capacity && e->ch[i].used) ? &e->ch[i] : NULL;
}

/* Give the channel new PCMU to play (NULL: none), under the lock; returns the old owner. */
static void *swap_play(rtpe_chan *c, const uint8_t *data, size_t len, void *owner) {
    void *old = c->play_owner;
    c->play_owner = owner;
    c->play = data;
    c->play_len = data ? len : 0;
    c->play_pos = 0;
    return old;
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

static void close_chan(rtpe_chan *c) {
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

int rtpe_init(rtpe_engine *e, int capacity, int loud_level) {
    if (capacity < 1 || capacity > RTPE_MAX_CAPACITY) return RTPE_ERR_CAPACITY;
    e->capacity = capacity;
    e->loud_level = loud_level;
    e->ch = calloc((size_t)capacity, sizeof(rtpe_chan));
    if (!e->ch) return RTPE_ERR_NOMEM;
    for (int i = 0; i < capacity; i++) { e->ch[i].fd = -1; e->ch[i].tape_fd = -1; }
    pthread_mutex_init(&e->lock, NULL);
    e->next_tick_ns = now_ns(CLOCK_MONOTONIC) + FRAME_NS;
    if (pthread_create(&e->thread, NULL, clock_main, e) != 0) return RTPE_ERR_THREAD;
    e->thread_started = 1;
    return RTPE_OK;
}

void rtpe_stop(rtpe_engine *e) {
    if (e->thread_started) {
        e->stop = 1;
        pthread_join(e->thread, NULL);
        e->thread_started = 0;
    }
    for (int i = 0; e->ch && i < e->capacity; i++)
        if (e->ch[i].used) close_chan(&e->ch[i]);
}

void *rtpe_take_play(rtpe_engine *e, int i) {
    if (!e->ch || i < 0 || i >= e->capacity) return NULL;
    return swap_play(&e->ch[i], NULL, 0, NULL);
}

void rtpe_free(rtpe_engine *e) {
    free(e->ch);
    e->ch = NULL;
}

int rtpe_ipv4(const char *host, int port, struct sockaddr_in *out) {
    memset(out, 0, sizeof *out);
    out->sin_family = AF_INET;
    out->sin_port = htons((uint16_t)port);
    return inet_pton(AF_INET, host, &out->sin_addr) == 1 ? RTPE_OK : RTPE_ERR_ADDR;
}

int rtpe_open(rtpe_engine *e, const struct sockaddr_in *local, int *channel, int *port) {
    struct sockaddr_in a = *local;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return RTPE_ERR_SYS;
    int on = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return RTPE_ERR_SYS;
    }
    socklen_t alen = sizeof a;
    getsockname(fd, (struct sockaddr *)&a, &alen);
    int slot = -1;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < e->capacity; i++) if (!e->ch[i].used) { slot = i; break; }
    if (slot >= 0) {
        rtpe_chan *c = &e->ch[slot];
        memset(c, 0, sizeof *c);  /* play_owner too: close gave it back */
        c->used = 1;
        c->fd = fd;
        c->tape_fd = -1;
        c->bound_any = local->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    pthread_mutex_unlock(&e->lock);
    if (slot < 0) {
        close(fd);
        return RTPE_ERR_FULL;
    }
    *channel = slot;
    *port = (int)ntohs(a.sin_port);
    return RTPE_OK;
}

int rtpe_start(rtpe_engine *e, int i, const struct sockaddr_in *remote, const char *tape_path,
               uint32_t ssrc, double *t0) {
    int tape_fd = -1;
    if (tape_path != NULL) {
        tape_fd = open(tape_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (tape_fd < 0) return RTPE_ERR_TAPE;
        write_wav_header(tape_fd, 0);
        lseek(tape_fd, WAV_HDR, SEEK_SET);
    }
    int16_t *rx = calloc(RING, sizeof(int16_t)), *tx = calloc(RING, sizeof(int16_t));
    if (!rx || !tx) { free(rx); free(tx); if (tape_fd >= 0) close(tape_fd); return RTPE_ERR_NOMEM; }
    int state = RTPE_OK;
    pthread_mutex_lock(&e->lock);
    rtpe_chan *c = find_chan(e, i);
    if (c == NULL) state = RTPE_ERR_NOCHAN;
    else if (c->running) state = RTPE_ERR_STARTED;
    else {
        c->remote = *remote;
        c->ssrc = ssrc;
        c->seq = (uint16_t)(ssrc >> 7);
        c->ts0 = ssrc * 2654435761u;
        c->tick0 = e->ticks;
        c->marker = 1;
        c->sending = 1;
        c->tape_fd = tape_fd;
        c->rx = rx;
        c->tx = tx;
        /* sample 0 no later than the first tick's scheduled time: a tick already due (its wake-up
         * waiting for this lock) is scheduled before now, and its frame would fall off the tape */
        int64_t now = now_ns(CLOCK_MONOTONIC);
        c->t0_ns = e->next_tick_ns < now ? e->next_tick_ns : now;
        c->running = 1;
        *t0 = (double)c->t0_ns / 1e9;
    }
    pthread_mutex_unlock(&e->lock);
    if (state != RTPE_OK) {
        free(rx); free(tx);
        if (tape_fd >= 0) close(tape_fd);
    }
    return state;
}

int rtpe_play(rtpe_engine *e, int i, const uint8_t *data, size_t len, void *owner, void **old_owner) {
    int state = RTPE_ERR_NOCHAN;
    pthread_mutex_lock(&e->lock);
    rtpe_chan *c = find_chan(e, i);
    if (c != NULL) {
        state = RTPE_OK;
        *old_owner = swap_play(c, data, len, owner);
    }
    pthread_mutex_unlock(&e->lock);
    return state;
}

/* Undo maybe_connect(), keeping the socket's port (the one our SDP advertised). Linux unbinds a
 * UDP socket that was bound to port 0 when it is disconnected (__udp_disconnect: no
 * SOCK_BINDPORT_LOCK), so it is bound again, explicitly, to the same address and port. */
static int disconnect_keep_port(rtpe_chan *c) {
    struct sockaddr_in local;
    socklen_t len = sizeof local;
    if (getsockname(c->fd, (struct sockaddr *)&local, &len) < 0) return -1;
    struct sockaddr none = {.sa_family = AF_UNSPEC};
    if (connect(c->fd, &none, sizeof none) < 0) return -1;
    struct sockaddr_in now;
    len = sizeof now;
    if (getsockname(c->fd, (struct sockaddr *)&now, &len) == 0 && now.sin_port == local.sin_port) return 0;
    return bind(c->fd, (const struct sockaddr *)&local, sizeof local);
}

int rtpe_set_remote(rtpe_engine *e, int i, const struct sockaddr_in *remote, int sending, int *moved) {
    int state = RTPE_ERR_NOCHAN;
    *moved = 0;
    pthread_mutex_lock(&e->lock);
    rtpe_chan *c = find_chan(e, i);
    if (c != NULL && !c->running) state = RTPE_ERR_IDLE;
    else if (c != NULL) {
        state = RTPE_OK;
        if (remote != NULL && (remote->sin_port != c->remote.sin_port ||
                               remote->sin_addr.s_addr != c->remote.sin_addr.s_addr)) {
            /* what arrived by the old path goes on the tape under the old path's anchor */
            rx_drain(c, now_ns(CLOCK_MONOTONIC) - now_ns(CLOCK_REALTIME), e->loud_level);
            c->remote = *remote;
            if (c->connected) {  /* a socket connect()ed to the old address would take nothing from the new one */
                if (disconnect_keep_port(c) < 0) state = RTPE_ERR_SYS;
                c->connected = 0;
            }
            reanchor(c);
            c->moves++;
            *moved = 1;
        }
        c->sending = sending ? 1 : 0;
    }
    pthread_mutex_unlock(&e->lock);
    return state;
}

int rtpe_close(rtpe_engine *e, int i, rtpe_stats *stats, void **old_owner) {
    int state = RTPE_ERR_NOCHAN;
    pthread_mutex_lock(&e->lock);
    rtpe_chan *c = find_chan(e, i);
    if (c != NULL) {
        state = RTPE_OK;
        *old_owner = swap_play(c, NULL, 0, NULL);
        if (c->running) rx_drain(c, now_ns(CLOCK_MONOTONIC) - now_ns(CLOCK_REALTIME), e->loud_level);  /* the last reads */
        stats->rx_lost = c->lost_done + source_lost(c);
        stats->rx_sources = c->rx_sources;
        stats->moves = c->moves;
        stats->rx_jitter_ms_mean = (c->jitter_n ? c->jitter_sum / (double)c->jitter_n : 0.0) / 8.0;
        stats->rx_jitter_ms_max = c->jitter_max / 8.0;
        stats->rx_delay_ms_max = c->delay_max / 8.0;
        stats->rx_packets = c->rx_packets;
        stats->tx_packets = c->tx_packets;
        stats->rx_other_pt = c->rx_other;
        stats->late_samples = c->rx_late;
        stats->tx_errors = c->send_errors;
        close_chan(c);
    }
    pthread_mutex_unlock(&e->lock);
    return state;
}

void rtpe_health_take(rtpe_engine *e, rtpe_health *out) {
    int64_t late, busy, busy_max, skipped, n;
    int running = 0;
    pthread_mutex_lock(&e->lock);
    late = e->late_max_ns; busy = e->busy_ns; busy_max = e->busy_max_ns;
    skipped = e->skipped; n = e->n_ticks;
    for (int i = 0; i < e->capacity; i++) running += e->ch[i].running;
    e->late_max_ns = e->busy_ns = e->busy_max_ns = e->skipped = e->n_ticks = 0;
    pthread_mutex_unlock(&e->lock);
    out->late_max_ms = (double)late / 1e6;
    out->busy_mean_ms = n ? (double)busy / (double)n / 1e6 : 0.0;
    out->busy_max_ms = (double)busy_max / 1e6;
    out->skipped_ticks = (long long)skipped;
    out->ticks = (long long)n;
    out->running = running;
}

int64_t rtpe_last_loud_ns(const rtpe_engine *e, int i) {
    return e->ch[i].last_loud_ns;  /* a 64-bit aligned read */
}

double rtpe_monotonic(void) {
    return (double)now_ns(CLOCK_MONOTONIC) / 1e9;
}

void rtpe_encode_pcmu(const int16_t *samples, size_t n, uint8_t *out) {
    for (size_t i = 0; i < n; i++) out[i] = (uint8_t)lin_to_ulaw(samples[i]);
}
