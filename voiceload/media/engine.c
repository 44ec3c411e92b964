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
 *   - sends one frame of the negotiated codec (PCMU, PCMA, G.722, Opus: codec.c), pre-encoded: the
 *     current utterance, or silence (no DTX: a continuous stream), or an RFC 4733 DTMF event;
 *     SRTP-protected when the call is (libsrtp2);
 *   - every second, reads the call's RTCP socket, and every 5 s sends a sender report: the far
 *     end's reports give the round trip and its view of our stream;
 *   - keeps the call's tape: an 8 kHz 16-bit WAV on the wire's own timeline, mono (both sides
 *     mixed) or stereo (caller left, far end right). Received audio is decoded first. Sent audio
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
#include <srtp2/srtp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define RATE RTPE_CLOCK_RATE
#define FRAME RTPE_FRAME_SAMPLES  /* tape samples per 20 ms frame */
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
#define PT_CN 13                  /* comfort noise (RFC 3389) */
#define WAV_HDR 44
#define RESYNC (RATE / 4)         /* a packet taped this many samples (250 ms) before its arrival: a new timeline */
#define RESYNC_MARKED (RATE / 25) /* the same for a talkspurt's first packet (marker bit): 40 ms */
#define DECODE_MAX 2048           /* tape samples one packet may decode to (Opus: up to 120 ms = 960) */
#define RTCP_READ_EVERY 50        /* ticks between reads of a channel's RTCP socket (1 s; arrival is the kernel's) */
#define RTCP_FIRST 50             /* ticks from the start to our first report (1 s, staggered by channel) */
#define RTCP_EVERY 250            /* ticks between our reports (5 s, RFC 3550's minimum interval) */
#define RTCP_MAX 512
#define SRTP_TRAILER 16           /* the most SRTP adds to an RTP packet (10-byte tag), SRTCP to RTCP (4 + 10) */
#define NTP_EPOCH_OFFSET 2208988800ULL /* seconds from 1900 (NTP) to 1970 (Unix) */

_Static_assert(RTPE_READ_LAG_MS == RX_EVERY * (FRAME_NS / 1000000), "engine.h's read lag is RX_EVERY ticks");

struct rtpe_chan {
    int used, running;
    int fd, rtcp_fd;
    struct sockaddr_in remote;
    int connected;                /* connect()ed to `remote` once it sent from there: sends skip the route lookup */
    int bound_any;                /* bound to 0.0.0.0: never connected (see maybe_connect) */
    int sending;                  /* 0 while the far end holds the call (sendonly, inactive, c=0.0.0.0) */
    uint32_t moves;               /* times rtpe_set_remote moved the channel to another address */
    /* the negotiated media (rtpe_media) */
    int codec, pt, event_pt, ratio;  /* ratio: RTP clock ticks per tape sample (Opus 6, else 1) */
    int codec_delay;              /* tape samples its decoded audio lags the sender's timeline (rtpe_codec_delay) */
    rtpe_decoder *dec;
    srtp_t srtp_tx, srtp_rx;
    int rtcp;                     /* 0 none, 1 own socket to rtcp_remote, 2 muxed */
    struct sockaddr_in rtcp_remote;
    int stereo;
    uint16_t seq;
    uint32_t ssrc, ts0;
    int64_t tick0;                /* engine tick at start: the RTP timestamp follows the clock, ticks skipped or not */
    int marker;
    /* playback: a clip the caller keeps valid (through `play_owner`) until the next play or close */
    void *play_owner;
    rtpe_clip play;
    size_t play_pos;              /* frames sent of it */
    /* DTMF being sent: digits, each dtmf_dur ticks of events then dtmf_gap ticks of audio */
    char dtmf_digits[RTPE_MAX_DTMF];
    int dtmf_n, dtmf_dur, dtmf_gap, dtmf_volume;
    int64_t dtmf_tick0;           /* the tick of the first digit's first event packet */
    uint32_t dtmf_ts;             /* the current event's RTP timestamp (its start) */
    /* tape, in samples since t0 */
    int tape_fd;
    int64_t t0_ns, flushed, rx_next, tx_next;
    int16_t *rx, *tx;
    /* turn-taking: the level of the last audio packet, on pjmedia's bridge scale (0..127), and when
     * (kernel arrival, monotonic ns) the far end was last at least `loud_level` */
    int level;
    int64_t last_loud_ns;
    /* stats */
    uint64_t rx_packets, rx_bytes, rx_other, rx_late, tx_packets, tx_bytes, send_errors;
    uint64_t rx_cn, rx_dtmf, rx_foreign, rx_auth_failed;
    int have_seq;
    uint16_t max_seq;
    uint32_t cycles, base_seq;
    /* the far end's current source (SSRC): a new one starts new sequence and timeline bookkeeping */
    int have_ssrc;
    uint32_t rx_ssrc, rx_sources;
    uint64_t src_packets;         /* packets of the current source */
    long long lost_done;          /* packets lost by the sources before it */
    int64_t last_at;              /* arrival (tape samples) and RTP timestamp of the last audio packet, for jitter */
    uint32_t last_ts;
    int have_transit;
    int64_t ts_ext;               /* the last packet's RTP timestamp, unwrapped, in tape samples */
    int64_t transit_min, transit_prev_min; /* arrival - timestamp: minimum this epoch and the last */
    int transit_n;
    double jitter, jitter_max, jitter_sum;
    uint64_t jitter_n;
    int64_t delay_max;            /* samples a packet arrived after the anchor's timeline: how far
                                   * ahead of its arrival the tape placed it (the smoothed jitter
                                   * above understates one late packet by up to 16x) */
    /* DTMF received: the event in progress (its RTP timestamp) and those seen */
    int dtmf_rx_open;
    uint32_t dtmf_rx_ts;
    int n_dtmf_rx;
    rtpe_dtmf_event dtmf_rx[RTPE_MAX_DTMF_RX];
    /* RTCP: ours (sent) and the far end's (read) */
    int64_t rtcp_next_tick;
    uint64_t rtcp_tx, rtcp_rx;
    uint32_t far_lsr;             /* the middle 32 bits of the NTP time in the far end's last SR */
    int64_t far_lsr_at_ns;        /* when it arrived (realtime ns), for our DLSR */
    long long expected_prior, received_prior; /* for our reports' fraction lost */
    double rtt_sum, rtt_max;
    uint64_t rtt_n;
    long long far_lost;
    double far_jitter_ms;
};

/* The codecs' silence frames, encoded once per process (rtpe_tables_init). */
static uint8_t silence_bytes[RTPE_NCODECS][RTPE_MAX_FRAME_BYTES];
static uint16_t silence_size[RTPE_NCODECS];

void rtpe_tables_init(void) {
    rtpe_codec_tables_init();
    int16_t zeros[FRAME] = {0}, decoded[FRAME];
    for (int k = 0; k < RTPE_NCODECS; k++) {
        uint32_t off = 0;
        long n = rtpe_encode_clip(k, zeros, FRAME, 1, silence_bytes[k], sizeof silence_bytes[k], &off,
                                  &silence_size[k], decoded);
        if (n <= 0) silence_size[k] = 0;  /* that codec cannot start: rtpe_start refuses it */
    }
}

int rtpe_srtp_init(void) {
    return srtp_init() == srtp_err_status_ok ? RTPE_OK : RTPE_ERR_SRTP;
}

static int64_t now_ns(clockid_t clk) {
    struct timespec ts;
    clock_gettime(clk, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t sample_at(const rtpe_chan *c, int64_t mono_ns) {
    return (mono_ns - c->t0_ns) * RATE / 1000000000LL;
}

/* Write tape samples [flushed, upto) and clear them from the rings: one track (received + sent,
 * saturated), or two (sent left, received right). */
static void flush_to(rtpe_chan *c, int64_t upto) {
    int16_t buf[2 * FLUSH_CHUNK];
    while (c->flushed < upto) {
        int64_t n = upto - c->flushed;
        if (n > FLUSH_CHUNK) n = FLUSH_CHUNK;
        int64_t k0 = c->flushed & RING_MASK;
        if (n > RING - k0) n = RING - k0;  /* one contiguous piece of the ring at a time: the loop vectorises */
        const int16_t *rx = c->rx + k0, *tx = c->tx + k0;
        if (c->stereo) {
            for (int64_t i = 0; i < n; i++) { buf[2 * i] = tx[i]; buf[2 * i + 1] = rx[i]; }
        } else {
            for (int64_t i = 0; i < n; i++) {
                int v = rx[i] + tx[i];
                buf[i] = (int16_t)(v > 32767 ? 32767 : v < -32768 ? -32768 : v);
            }
        }
        memset(c->rx + k0, 0, (size_t)n * sizeof(int16_t));
        memset(c->tx + k0, 0, (size_t)n * sizeof(int16_t));
        if (c->tape_fd >= 0) {
            ssize_t w = write(c->tape_fd, buf, (size_t)n * (c->stereo ? 4 : 2));
            (void)w; /* a full tmpfs loses the tape, not the call: the analysis then finds no audio */
        }
        c->flushed += n;
    }
}

/* Put n samples on a track at sample `at`; returns the sum of their magnitudes. */
static long place(rtpe_chan *c, int16_t *track, int64_t at, const int16_t *pcm, int n, uint64_t *late) {
    if (at + n - c->flushed > RING) flush_to(c, at + n - RING);
    int skip = 0;  /* samples before the tape started (early RTP), or read after their block was written */
    if (at < c->flushed) {
        skip = at + n <= c->flushed ? n : (int)(c->flushed - at);
        int64_t counted = (at + skip) - (at > 0 ? at : 0);  /* only those at or after sample 0 are late */
        if (counted > 0) *late += (uint64_t)counted;
    }
    long sum = 0;
    for (int i = skip; i < n; i++) {
        int v = pcm[i];
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
static long long source_expected(const rtpe_chan *c) {
    return c->have_seq ? (long long)c->cycles + c->max_seq - c->base_seq + 1 : 0;
}

static long long source_lost(const rtpe_chan *c) {
    long long lost = source_expected(c) - (long long)c->src_packets;
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
    c->expected_prior = c->received_prior = 0;
    c->dtmf_rx_open = 0;
    reanchor(c);
}

static uint32_t be32(const uint8_t *p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v >> 24); p[1] = (uint8_t)(v >> 16); p[2] = (uint8_t)(v >> 8); p[3] = (uint8_t)v;
}

/* NTP time (RFC 3550 4: seconds since 1900 in 32.32 fixed point) of a realtime instant. */
static uint64_t ntp_of(int64_t real_ns) {
    uint64_t sec = (uint64_t)(real_ns / 1000000000LL) + NTP_EPOCH_OFFSET;
    uint64_t frac = ((uint64_t)(real_ns % 1000000000LL) << 32) / 1000000000ULL;
    return (sec << 32) | frac;
}

/* ---------------------------------------------------------------- RTCP (RFC 3550 6.4) */

/* One report block (24 bytes) about the far end's stream. */
static void report_block(rtpe_chan *c, uint8_t *b, int64_t real_now) {
    long long expected = source_expected(c), received = (long long)c->src_packets;
    long long lost = c->lost_done + source_lost(c);
    long long exp_int = expected - c->expected_prior, rec_int = received - c->received_prior;
    c->expected_prior = expected;
    c->received_prior = received;
    long long lost_int = exp_int - rec_int;
    uint32_t fraction = (exp_int <= 0 || lost_int <= 0) ? 0 : (uint32_t)((lost_int << 8) / exp_int);
    if (fraction > 255) fraction = 255;
    if (lost > 0x7FFFFF) lost = 0x7FFFFF;
    put32(b, c->rx_ssrc);
    put32(b + 4, (fraction << 24) | ((uint32_t)lost & 0xFFFFFF));
    put32(b + 8, c->cycles + c->max_seq);
    put32(b + 12, (uint32_t)(c->jitter * c->ratio));  /* in the codec's RTP clock */
    put32(b + 16, c->far_lsr);
    uint32_t dlsr = 0;
    if (c->far_lsr_at_ns > 0) dlsr = (uint32_t)(((uint64_t)(real_now - c->far_lsr_at_ns) << 16) / 1000000000ULL);
    put32(b + 20, dlsr);
}

/* Send our SR (with a report block once the far end has sent) and an SDES CNAME, as RTCP or SRTCP. */
static void rtcp_send(rtpe_chan *c, int64_t tick) {
    uint8_t p[RTCP_MAX + SRTP_TRAILER];
    int64_t real_now = now_ns(CLOCK_REALTIME);
    int rc = c->have_ssrc ? 1 : 0;
    int sr_words = 6 + 6 * rc;  /* header + SSRC + sender info (5 words) + blocks, minus one */
    p[0] = (uint8_t)(0x80 | rc);
    p[1] = 200;
    p[2] = 0; p[3] = (uint8_t)sr_words;
    put32(p + 4, c->ssrc);
    uint64_t ntp = ntp_of(real_now);
    put32(p + 8, (uint32_t)(ntp >> 32));
    put32(p + 12, (uint32_t)ntp);
    put32(p + 16, c->ts0 + (uint32_t)((tick - c->tick0) * FRAME * c->ratio));
    put32(p + 20, (uint32_t)c->tx_packets);
    put32(p + 24, (uint32_t)c->tx_bytes);
    int len = 28;
    if (rc) { report_block(c, p + len, real_now); len += 24; }
    /* SDES: one chunk, CNAME "voiceload", padded to a word */
    static const char cname[] = "voiceload";
    int item = 2 + (int)sizeof cname - 1;
    int chunk = 4 + item + 1;
    chunk = (chunk + 3) & ~3;
    uint8_t *s = p + len;
    memset(s, 0, 4 + (size_t)chunk);
    s[0] = 0x81; s[1] = 202; s[2] = 0; s[3] = (uint8_t)(chunk / 4);
    put32(s + 4, c->ssrc);
    s[8] = 1; s[9] = (uint8_t)(sizeof cname - 1);
    memcpy(s + 10, cname, sizeof cname - 1);
    len += 4 + chunk;
    if (c->srtp_tx != NULL && srtp_protect_rtcp(c->srtp_tx, p, &len) != srtp_err_status_ok) return;
    int fd = c->rtcp == 2 ? c->fd : c->rtcp_fd;
    const struct sockaddr_in *to = c->rtcp == 2 ? &c->remote : &c->rtcp_remote;
    ssize_t sent = (c->rtcp == 2 && c->connected) ? send(fd, p, (size_t)len, 0)
                                                  : sendto(fd, p, (size_t)len, 0, (const struct sockaddr *)to, sizeof *to);
    if (sent >= 0) c->rtcp_tx++;
}

/* A report block about our stream: the far end's view of it, and a round trip when it echoes our SR. */
static void read_block(rtpe_chan *c, const uint8_t *b, int64_t arrival_real) {
    if (be32(b) != c->ssrc) return;
    uint32_t cum = be32(b + 4) & 0xFFFFFF;
    c->far_lost = (cum & 0x800000) ? 0 : (long long)cum;  /* negative (duplicates): none lost */
    c->far_jitter_ms = (double)be32(b + 12) / c->ratio / (RATE / 1000.0);
    uint32_t lsr = be32(b + 16), dlsr = be32(b + 20);
    if (lsr == 0) return;
    uint32_t a = (uint32_t)(ntp_of(arrival_real) >> 16);
    double rtt_ms = (double)(uint32_t)(a - lsr - dlsr) * 1000.0 / 65536.0;
    if (rtt_ms < 0 || rtt_ms > 10000) return;  /* a report about an SR from before a clock step */
    c->rtt_sum += rtt_ms;
    c->rtt_n++;
    if (rtt_ms > c->rtt_max) c->rtt_max = rtt_ms;
}

/* A compound RTCP packet from the far end (already SRTCP-unprotected). */
static void rtcp_packet(rtpe_chan *c, uint8_t *p, int len, int64_t arrival_real) {
    c->rtcp_rx++;
    int off = 0;
    while (off + 4 <= len) {
        uint8_t *h = p + off;
        int count = h[0] & 0x1F, pt = h[1];
        int words = (h[2] << 8) | h[3];
        int size = 4 * (words + 1);
        if ((h[0] >> 6) != 2 || off + size > len) return;
        int blocks = 0;
        if (pt == 200 && size >= 28) {  /* SR: remember its NTP time for our next report's LSR/DLSR */
            c->far_lsr = (be32(h + 8) << 16) | (be32(h + 12) >> 16);
            c->far_lsr_at_ns = arrival_real;
            blocks = 28;
        } else if (pt == 201 && size >= 8) {
            blocks = 8;
        }
        for (int k = 0; blocks && k < count && blocks + 24 * (k + 1) <= size; k++)
            read_block(c, h + blocks + 24 * k, arrival_real);
        off += size;
    }
}

/* A report from the far end, on the RTCP socket or muxed on RTP: SRTCP-unprotected first on an
 * SRTP call (one that fails is dropped and counted). */
static void rtcp_in(rtpe_chan *c, uint8_t *p, int len, int64_t arrival_real) {
    if (c->srtp_rx != NULL && srtp_unprotect_rtcp(c->srtp_rx, p, &len) != srtp_err_status_ok) {
        c->rx_auth_failed++;
        return;
    }
    rtcp_packet(c, p, len, arrival_real);
}

/* ---------------------------------------------------------------- receive */

/* A telephone-event packet (RFC 4733 2.3): a new event starts at a new timestamp. */
static void dtmf_packet(rtpe_chan *c, const uint8_t *pay, int n, uint32_t ts, int64_t arrival_mono) {
    static const char digits[] = "0123456789*#ABCD";
    c->rx_dtmf++;
    if (n < 4 || pay[0] > 15) return;
    double duration_ms = ((pay[2] << 8) | pay[3]) / (double)c->ratio / (RATE / 1000.0);
    if (!c->dtmf_rx_open || ts != c->dtmf_rx_ts) {
        if (c->n_dtmf_rx >= RTPE_MAX_DTMF_RX) return;
        rtpe_dtmf_event *ev = &c->dtmf_rx[c->n_dtmf_rx++];
        ev->digit = digits[pay[0]];
        ev->at_ns = arrival_mono;
        c->dtmf_rx_open = 1;
        c->dtmf_rx_ts = ts;
    }
    rtpe_dtmf_event *ev = &c->dtmf_rx[c->n_dtmf_rx - 1];
    if (duration_ms > ev->duration_ms) ev->duration_ms = duration_ms;
}

static void rx_packet(rtpe_chan *c, uint8_t *p, int len, int64_t arrival_mono, int64_t arrival_real,
                      int loud_level) {
    if (len < RTP_HDR || (p[0] >> 6) != 2) return;
    if (p[1] >= 192 && p[1] <= 223) {  /* RTCP (RFC 5761): muxed, or a far end's reports sent to our port */
        rtcp_in(c, p, len, arrival_real);
        return;
    }
    if (c->srtp_rx != NULL && srtp_unprotect(c->srtp_rx, p, &len) != srtp_err_status_ok) {
        c->rx_auth_failed++;  /* a forged, replayed or plain packet: dropped, as a receiver must */
        return;
    }
    int cc = p[0] & 0x0F, has_ext = p[0] & 0x10, has_pad = p[0] & 0x20;
    int pt = p[1] & 0x7F;
    uint16_t seq = (uint16_t)((p[2] << 8) | p[3]);
    uint32_t ts = be32(p + 4), ssrc = be32(p + 8);
    int off = RTP_HDR + 4 * cc;
    if (has_ext) {
        if (off + 4 > len) return;
        off += 4 + 4 * ((p[off + 2] << 8) | p[off + 3]);
    }
    int end = len;
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
    if (c->event_pt >= 0 && pt == c->event_pt) { dtmf_packet(c, p + off, end - off, ts, arrival_mono); return; }
    if (pt == PT_CN && pt != c->pt) { c->rx_cn++; return; }  /* background noise, not speech: silence on the tape */
    if (pt != c->pt) { c->rx_other++; return; }
    int16_t pcm[DECODE_MAX];
    int n = rtpe_decode(c->codec, c->dec, p + off, end - off, pcm, DECODE_MAX);
    int64_t at = sample_at(c, arrival_mono);
    int32_t step = (int32_t)(ts - c->last_ts) / c->ratio;  /* in tape samples */
    c->ts_ext = c->have_transit ? c->ts_ext + step : (int64_t)(ts / (uint32_t)c->ratio);
    int64_t transit = at - c->ts_ext;
    int marked = p[1] & 0x80;
    if (c->have_transit && transit - anchor_of(c) > (marked ? RESYNC_MARKED : RESYNC)) {
        /* the sender's timeline stepped back (a timestamp base reset without a new SSRC, or a
         * timestamp that stood still through a pause): the old anchor would tape this and the
         * following packets that far before their arrival, over audio already taped. No network
         * delays a packet 250 ms behind its neighbours; a talkspurt's first packet may start a new
         * timeline sooner, since a sender that froze its timestamps in the pause marks it. */
        reanchor(c);
        c->ts_ext = (int64_t)(ts / (uint32_t)c->ratio);
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
        int64_t d = (at - c->last_at) - step;
        if (d < 0) d = -d;
        c->jitter += ((double)d - c->jitter) / 16.0;
        if (c->jitter > c->jitter_max) c->jitter_max = c->jitter;
        c->jitter_sum += c->jitter;
        c->jitter_n++;
    }
    c->last_at = at;
    c->last_ts = ts;
    c->have_transit = 1;
    if (n <= 0) return;
    if (n > RING / 2) n = RING / 2;
    int64_t anchor = anchor_of(c);
    if (transit - anchor > c->delay_max) c->delay_max = transit - anchor;
    int64_t pos = c->ts_ext + anchor - c->codec_delay;
    long sum = place(c, c->rx, pos, pcm, n, &c->rx_late);
    if (pos + n > c->rx_next) c->rx_next = pos + n;
    c->level = rtpe_lin_to_ulaw((int)(sum / n)) ^ 0xFF;
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

/* Read what arrived on `fd` (the RTP socket, or the RTCP one: `rtcp`), with kernel arrival times. */
static void drain(rtpe_chan *c, int fd, int rtcp, int64_t mono_minus_real, int loud_level) {
    uint8_t bufs[RX_BATCH][PKT_MAX];
    char ctl[RX_BATCH][CMSG_SPACE(sizeof(struct timespec))];
    struct sockaddr_in from[RX_BATCH];
    struct iovec iov[RX_BATCH];
    struct mmsghdr msgs[RX_BATCH];
    int named = rtcp || !c->connected;
    for (;;) {
        memset(msgs, 0, sizeof msgs);
        for (int i = 0; i < RX_BATCH; i++) {
            iov[i].iov_base = bufs[i];
            iov[i].iov_len = PKT_MAX - SRTP_TRAILER;
            msgs[i].msg_hdr.msg_iov = &iov[i];
            msgs[i].msg_hdr.msg_iovlen = 1;
            msgs[i].msg_hdr.msg_control = ctl[i];
            msgs[i].msg_hdr.msg_controllen = sizeof ctl[i];
            if (named) {
                msgs[i].msg_hdr.msg_name = &from[i];
                msgs[i].msg_hdr.msg_namelen = sizeof from[i];
            }
        }
        int n = recvmmsg(fd, msgs, RX_BATCH, MSG_DONTWAIT, NULL);
        if (n <= 0) return;
        int64_t fallback = now_ns(CLOCK_REALTIME);
        for (int i = 0; i < n; i++) {
            int64_t real = fallback;
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msgs[i].msg_hdr); cm; cm = CMSG_NXTHDR(&msgs[i].msg_hdr, cm)) {
                if (cm->cmsg_level == SOL_SOCKET && cm->cmsg_type == SCM_TIMESTAMPNS) {
                    struct timespec ts;
                    memcpy(&ts, CMSG_DATA(cm), sizeof ts);
                    real = (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
                }
            }
            int len = (int)msgs[i].msg_len;
            if (rtcp) {
                if (len >= 8 && (bufs[i][0] >> 6) == 2) rtcp_in(c, bufs[i], len, real);
                else if (c->srtp_rx != NULL) c->rx_auth_failed++;
                continue;
            }
            int from_named = named && msgs[i].msg_hdr.msg_namelen >= sizeof from[i];
            if (from_named && (from[i].sin_port != c->remote.sin_port ||
                               from[i].sin_addr.s_addr != c->remote.sin_addr.s_addr))
                c->rx_foreign++;  /* taped all the same: a far end may send from elsewhere (asymmetric RTP) */
            rx_packet(c, bufs[i], len, real + mono_minus_real, real, loud_level);
            if (!c->connected && from_named) maybe_connect(c, &from[i]);
        }
        if (n < RX_BATCH) return;
    }
}

static void rx_drain(rtpe_chan *c, int64_t mono_minus_real, int loud_level) {
    drain(c, c->fd, 0, mono_minus_real, loud_level);
}

/* ---------------------------------------------------------------- send */

static void rtp_header(rtpe_chan *c, uint8_t *pkt, int pt, uint32_t ts) {
    pkt[0] = 0x80;
    pkt[1] = (uint8_t)(pt | (c->marker ? 0x80 : 0));
    c->marker = 0;
    pkt[2] = (uint8_t)(c->seq >> 8);
    pkt[3] = (uint8_t)c->seq;
    put32(pkt + 4, ts);
    put32(pkt + 8, c->ssrc);
    c->seq++;
}

static void send_rtp(rtpe_chan *c, uint8_t *pkt, int len) {
    int payload = len - RTP_HDR;
    if (c->srtp_tx != NULL && srtp_protect(c->srtp_tx, pkt, &len) != srtp_err_status_ok) {
        c->send_errors++;
        return;
    }
    ssize_t sent = c->connected ? send(c->fd, pkt, (size_t)len, 0)
                                : sendto(c->fd, pkt, (size_t)len, 0, (struct sockaddr *)&c->remote, sizeof c->remote);
    if (sent < 0) c->send_errors++;
    else { c->tx_packets++; c->tx_bytes += (uint64_t)payload; }
}

/* The DTMF packet of tick `tick`, when one is due: 1 sent (events replace audio), 0 audio's turn. */
static int tx_dtmf(rtpe_chan *c, int64_t tick) {
    if (c->dtmf_n == 0 || tick < c->dtmf_tick0) return 0;
    int64_t per = c->dtmf_dur + c->dtmf_gap, k = (tick - c->dtmf_tick0) / per, in = (tick - c->dtmf_tick0) % per;
    if (k >= c->dtmf_n) { c->dtmf_n = 0; return 0; }
    if (in >= c->dtmf_dur + 2) return 0;  /* the gap: audio again (after the end packet's two repeats) */
    static const char codes[] = "0123456789*#ABCD";
    int code = (int)(strchr(codes, c->dtmf_digits[k]) - codes);
    uint32_t now_ts = c->ts0 + (uint32_t)((tick - c->tick0) * FRAME * c->ratio);
    if (in == 0) { c->dtmf_ts = now_ts; c->marker = 1; }
    int ended = in >= c->dtmf_dur - 1;
    int64_t dur = (in < c->dtmf_dur ? in + 1 : c->dtmf_dur) * FRAME * c->ratio;
    if (dur > 0xFFFF) dur = 0xFFFF;
    uint8_t pkt[RTP_HDR + 4 + SRTP_TRAILER];
    rtp_header(c, pkt, c->event_pt, c->dtmf_ts);
    pkt[RTP_HDR] = (uint8_t)code;
    pkt[RTP_HDR + 1] = (uint8_t)((ended ? 0x80 : 0) | (c->dtmf_volume & 0x3F));
    pkt[RTP_HDR + 2] = (uint8_t)(dur >> 8);
    pkt[RTP_HDR + 3] = (uint8_t)dur;
    send_rtp(c, pkt, RTP_HDR + 4);
    if (ended && in == c->dtmf_dur + 1) c->marker = 1;  /* the audio after an event starts a talkspurt */
    return 1;
}

/* Send the frame of tick `tick`, scheduled at `sched` (monotonic ns), and tape it at `sched`: an
 * utterance stays whole on the tape and ends where the schedule put it on the wire. The real send
 * is later by the wake-up's lateness (reported by health(), and a run is invalid past 40 ms) and
 * by the channel's turn within the wake-up (busy_max_ms in health(): about 4 us per channel). */
static void tx_frame(rtpe_chan *c, int64_t tick, int64_t sched) {
    int playing = c->play.frames > 0 && c->play_pos < c->play.frames;
    if (!c->sending) {
        /* held: nothing goes out and nothing is taped (the tape is the wire), but time passes for
         * what is playing; the first packet after the hold starts a talkspurt */
        if (playing) c->play_pos++;
        c->marker = 1;
        return;
    }
    if (tx_dtmf(c, tick)) return;  /* the recording waits for the digits */
    uint8_t pkt[RTP_HDR + RTPE_MAX_FRAME_BYTES + SRTP_TRAILER];
    int size;
    if (playing) {
        size = c->play.sizes[c->play_pos];
        memcpy(pkt + RTP_HDR, c->play.bytes + c->play.offsets[c->play_pos], (size_t)size);
    } else {
        size = silence_size[c->codec];
        memcpy(pkt + RTP_HDR, silence_bytes[c->codec], (size_t)size);
    }
    rtp_header(c, pkt, c->pt, c->ts0 + (uint32_t)((tick - c->tick0) * FRAME * c->ratio));
    send_rtp(c, pkt, RTP_HDR + size);
    int64_t pos = continue_or_jump(c->tx_next, sample_at(c, sched));
    if (playing) {
        place(c, c->tx, pos, c->play.pcm + c->play_pos * FRAME, FRAME, &c->rx_late);
        c->play_pos++;
    }
    c->tx_next = pos + FRAME;
}

/* One wake-up of the clock for one channel: read what arrived, send the frames due, write the tape. */
static void service(rtpe_engine *e, rtpe_chan *c, int64_t tick, int64_t sched, int frames, int64_t woke,
                    int64_t mono_minus_real) {
    int64_t index = c - e->ch;
    if ((tick + index) % RX_EVERY == 0 || frames > 1) rx_drain(c, mono_minus_real, e->loud_level);
    if (c->rtcp == 1 && (tick + index) % RTCP_READ_EVERY == 0) drain(c, c->rtcp_fd, 1, mono_minus_real, e->loud_level);
    for (int k = 0; k < frames; k++) tx_frame(c, tick + k, sched + k * FRAME_NS);
    if (c->rtcp && c->sending && tick >= c->rtcp_next_tick) {
        rtcp_send(c, tick);
        c->rtcp_next_tick = tick + RTCP_EVERY;
    }
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

/* Give the channel a new clip to play (NULL: none), under the lock; returns the old owner. */
static void *swap_play(rtpe_chan *c, const rtpe_clip *clip, void *owner) {
    void *old = c->play_owner;
    c->play_owner = owner;
    if (clip != NULL) c->play = *clip;
    else memset(&c->play, 0, sizeof c->play);
    c->play_pos = 0;
    return old;
}

static void write_wav_header(int fd, uint32_t samples, int stereo) {
    uint8_t h[WAV_HDR];
    uint16_t channels = stereo ? 2 : 1;
    uint32_t data = samples * 2 * channels, riff = 36 + data;
    memcpy(h, "RIFF", 4);
    memcpy(h + 4, &riff, 4);
    memcpy(h + 8, "WAVEfmt ", 8);
    uint32_t fmt_len = 16, rate = RATE, byte_rate = RATE * 2 * channels;
    uint16_t pcm = 1, align = (uint16_t)(2 * channels), bits = 16;
    memcpy(h + 16, &fmt_len, 4);
    memcpy(h + 20, &pcm, 2);
    memcpy(h + 22, &channels, 2);
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
        write_wav_header(c->tape_fd, (uint32_t)c->flushed, c->stereo);
        close(c->tape_fd);
        c->tape_fd = -1;
    }
    if (c->fd >= 0) { close(c->fd); c->fd = -1; }
    if (c->rtcp_fd >= 0) { close(c->rtcp_fd); c->rtcp_fd = -1; }
    if (c->srtp_tx) { srtp_dealloc(c->srtp_tx); c->srtp_tx = NULL; }
    if (c->srtp_rx) { srtp_dealloc(c->srtp_rx); c->srtp_rx = NULL; }
    rtpe_decoder_free(c->dec);
    c->dec = NULL;
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
    for (int i = 0; i < capacity; i++) { e->ch[i].fd = -1; e->ch[i].rtcp_fd = -1; e->ch[i].tape_fd = -1; }
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
    return swap_play(&e->ch[i], NULL, NULL);
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

/* A UDP socket bound to `a` (port 0: a free one) with kernel receive timestamps; its port goes to *port. */
static int bound_socket(const struct sockaddr_in *local, int *port) {
    struct sockaddr_in a = *local;
    int fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return -1;
    int on = 1;
    socklen_t alen = sizeof a;
    if (setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0 || bind(fd, (struct sockaddr *)&a, sizeof a) < 0 ||
        getsockname(fd, (struct sockaddr *)&a, &alen) < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return -1;
    }
    *port = (int)ntohs(a.sin_port);
    return fd;
}

int rtpe_open(rtpe_engine *e, const struct sockaddr_in *local, int *channel, int *port, int *rtcp_port) {
    int fd = bound_socket(local, port);
    if (fd < 0) return RTPE_ERR_SYS;
    int rtcp_fd = bound_socket(local, rtcp_port);  /* RTCP on a port of its own: RTP's socket gets connect()ed */
    if (rtcp_fd < 0) {
        int err = errno;
        close(fd);
        errno = err;
        return RTPE_ERR_SYS;
    }
    int slot = -1;
    pthread_mutex_lock(&e->lock);
    for (int i = 0; i < e->capacity; i++) if (!e->ch[i].used) { slot = i; break; }
    if (slot >= 0) {
        rtpe_chan *c = &e->ch[slot];
        memset(c, 0, sizeof *c);  /* play_owner too: close gave it back */
        c->used = 1;
        c->fd = fd;
        c->rtcp_fd = rtcp_fd;
        c->tape_fd = -1;
        c->bound_any = local->sin_addr.s_addr == htonl(INADDR_ANY);
    }
    pthread_mutex_unlock(&e->lock);
    if (slot < 0) {
        close(fd);
        close(rtcp_fd);
        return RTPE_ERR_FULL;
    }
    *channel = slot;
    return RTPE_OK;
}

/* An SRTP session (AES_CM_128_HMAC_SHA1_80 for SRTP and SRTCP) for every SSRC one way. */
static int srtp_session(srtp_t *out, const uint8_t *key, int inbound) {
    srtp_policy_t policy;
    memset(&policy, 0, sizeof policy);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtp);
    srtp_crypto_policy_set_aes_cm_128_hmac_sha1_80(&policy.rtcp);
    policy.ssrc.type = inbound ? ssrc_any_inbound : ssrc_any_outbound;
    policy.key = (unsigned char *)key;
    policy.window_size = 128;
    policy.next = NULL;
    return srtp_create(out, &policy) == srtp_err_status_ok ? RTPE_OK : RTPE_ERR_SRTP;
}

int rtpe_start(rtpe_engine *e, int i, const struct sockaddr_in *remote, const char *tape_path,
               uint32_t ssrc, const rtpe_media *m, double *t0) {
    if (m->codec < 0 || m->codec >= RTPE_NCODECS || silence_size[m->codec] == 0 || m->pt < 0 || m->pt > 127)
        return RTPE_ERR_CODEC;
    int ok = 1;
    rtpe_decoder *dec = rtpe_decoder_new(m->codec, &ok);
    if (!ok) return RTPE_ERR_CODEC;
    srtp_t stx = NULL, srx = NULL;
    if (m->srtp_tx_key != NULL && (srtp_session(&stx, m->srtp_tx_key, 0) != RTPE_OK ||
                                   srtp_session(&srx, m->srtp_rx_key, 1) != RTPE_OK)) {
        if (stx) srtp_dealloc(stx);
        rtpe_decoder_free(dec);
        return RTPE_ERR_SRTP;
    }
    int tape_fd = -1;
    if (tape_path != NULL) {
        tape_fd = open(tape_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (tape_fd >= 0) {
            write_wav_header(tape_fd, 0, m->stereo);
            lseek(tape_fd, WAV_HDR, SEEK_SET);
        }
    }
    int16_t *rx = calloc(RING, sizeof(int16_t)), *tx = calloc(RING, sizeof(int16_t));
    int state = tape_path != NULL && tape_fd < 0 ? RTPE_ERR_TAPE : (!rx || !tx) ? RTPE_ERR_NOMEM : RTPE_OK;
    if (state != RTPE_OK) {
        int err = errno;
        free(rx); free(tx);
        if (tape_fd >= 0) close(tape_fd);
        if (stx) srtp_dealloc(stx);
        if (srx) srtp_dealloc(srx);
        rtpe_decoder_free(dec);
        errno = err;
        return state;
    }
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
        c->codec = m->codec;
        c->pt = m->pt;
        c->event_pt = m->event_pt;
        c->ratio = rtpe_codec_rtp_rate(m->codec) / RATE;
        c->codec_delay = rtpe_codec_delay(m->codec);
        c->dec = dec;
        c->srtp_tx = stx;
        c->srtp_rx = srx;
        c->rtcp = m->rtcp;
        c->rtcp_remote = m->rtcp_remote;
        c->stereo = m->stereo;
        c->far_lost = -1;
        c->rtcp_next_tick = e->ticks + RTCP_FIRST + i % RTCP_FIRST;
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
        if (stx) srtp_dealloc(stx);
        if (srx) srtp_dealloc(srx);
        rtpe_decoder_free(dec);
    }
    return state;
}

int rtpe_play(rtpe_engine *e, int i, const rtpe_clip *clip, void *owner, void **old_owner, double *first) {
    int state = RTPE_ERR_NOCHAN;
    pthread_mutex_lock(&e->lock);
    rtpe_chan *c = find_chan(e, i);
    if (c != NULL) {
        state = RTPE_OK;
        *old_owner = swap_play(c, clip, owner);
        *first = (double)e->next_tick_ns / 1e9;
    }
    pthread_mutex_unlock(&e->lock);
    return state;
}

int rtpe_dtmf(rtpe_engine *e, int i, const char *digits, int duration_ms, int gap_ms, int volume,
              double *start, double *end) {
    size_t n = strlen(digits);
    if (n == 0 || n > RTPE_MAX_DTMF || strspn(digits, "0123456789*#ABCD") != n) return RTPE_ERR_BUSY;
    int dur = (duration_ms + 19) / 20, gap = (gap_ms + 19) / 20;
    if (dur < 1) dur = 1;
    if (gap < 2) gap = 2;
    int state = RTPE_ERR_NOCHAN;
    pthread_mutex_lock(&e->lock);
    rtpe_chan *c = find_chan(e, i);
    if (c != NULL && !c->running) state = RTPE_ERR_IDLE;
    else if (c != NULL && (c->dtmf_n > 0 || c->event_pt < 0)) state = RTPE_ERR_BUSY;
    else if (c != NULL) {
        state = RTPE_OK;
        memcpy(c->dtmf_digits, digits, n);
        c->dtmf_n = (int)n;
        c->dtmf_dur = dur;
        c->dtmf_gap = gap;
        c->dtmf_volume = volume < 0 ? 0 : volume > 63 ? 63 : volume;
        c->dtmf_tick0 = e->ticks;  /* the next tick to run, due at next_tick_ns */
        *start = (double)e->next_tick_ns / 1e9;
        /* the last digit ends when its end packet goes out: a packet leaves at the start of the
         * 20 ms it covers (as our audio does), so the end bit announces the end a packet early,
         * and a receiver (pjmedia's, for one) takes the digit as ended when it arrives */
        *end = *start + ((double)((int64_t)(n - 1) * (dur + gap) + dur - 1) * FRAME_NS) / 1e9;
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
        *old_owner = swap_play(c, NULL, NULL);
        if (c->running) {  /* the last reads */
            int64_t mono_minus_real = now_ns(CLOCK_MONOTONIC) - now_ns(CLOCK_REALTIME);
            rx_drain(c, mono_minus_real, e->loud_level);
            if (c->rtcp == 1) drain(c, c->rtcp_fd, 1, mono_minus_real, e->loud_level);
        }
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
        stats->rx_cn = c->rx_cn;
        stats->rx_dtmf = c->rx_dtmf;
        stats->rx_foreign = c->rx_foreign;
        stats->rx_auth_failed = c->rx_auth_failed;
        stats->rtcp_tx = c->rtcp_tx;
        stats->rtcp_rx = c->rtcp_rx;
        stats->rtt_ms_mean = c->rtt_n ? c->rtt_sum / (double)c->rtt_n : -1.0;
        stats->rtt_ms_max = c->rtt_n ? c->rtt_max : -1.0;
        stats->far_lost = c->far_lost;
        stats->far_jitter_ms = c->far_lost >= 0 ? c->far_jitter_ms : -1.0;
        stats->n_dtmf = c->n_dtmf_rx;
        memcpy(stats->dtmf, c->dtmf_rx, sizeof c->dtmf_rx);
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
    for (size_t i = 0; i < n; i++) out[i] = rtpe_lin_to_ulaw(samples[i]);
}
