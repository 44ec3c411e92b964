/*
 * voiceload's caller-side RTP engine, the pure C part: one clock thread sends, receives and tapes
 * every call (engine.c says how and why). No Python here: module.c is the CPython binding
 * (voiceload.media._rtpengine), voiceload/media/engine.py the only Python user.
 *
 * Threading rules.
 *   - The clock thread takes the engine's lock once per 20 ms tick, for every channel at once.
 *     The functions marked [locks] take that lock for their C work only.
 *   - Call a [locks] function holding no other lock that some thread may keep while it waits,
 *     and in CPython not holding the GIL (module.c wraps each one in Py_BEGIN/END_ALLOW_THREADS).
 *     Otherwise the clock waits for whatever holds that lock (seen: ticks 48 ms late while the
 *     tape worker ran numpy, when the GIL was taken back with the engine's lock held).
 *   - The clock thread never runs caller code and never reads a play owner (rtpe_play).
 *   - rtpe_init and rtpe_free are not thread-safe; rtpe_stop must be the last call before
 *     rtpe_take_play and rtpe_free.
 */
#ifndef VOICELOAD_MEDIA_ENGINE_H
#define VOICELOAD_MEDIA_ENGINE_H

#include <netinet/in.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "codec.h"

#define RTPE_CLOCK_RATE 8000      /* samples per second on the tape (the wire's clock is the codec's) */
#define RTPE_FRAME_SAMPLES 160    /* tape samples per 20 ms frame */
#define RTPE_SRTP_KEY_LEN 30      /* AES_CM_128_HMAC_SHA1_80: a 16-byte master key and a 14-byte salt */
#define RTPE_MAX_DTMF 32          /* digits one rtpe_dtmf call may queue */
#define RTPE_MAX_DTMF_RX 64       /* received DTMF events a channel keeps */
#define RTPE_READ_LAG_MS 80       /* a channel's socket is read every this many ms */
#define RTPE_MAX_CAPACITY 65536

/* What a call returns: RTPE_OK, or why not. For RTPE_ERR_SYS and RTPE_ERR_TAPE, errno says more. */
enum {
    RTPE_OK = 0,
    RTPE_ERR_ADDR,                /* not an IPv4 address */
    RTPE_ERR_SYS,                 /* a socket call failed */
    RTPE_ERR_TAPE,                /* the tape file could not be opened */
    RTPE_ERR_NOMEM,
    RTPE_ERR_FULL,                /* every channel is in use */
    RTPE_ERR_NOCHAN,              /* no open channel of that number */
    RTPE_ERR_STARTED,             /* the channel was started already */
    RTPE_ERR_CAPACITY,            /* capacity outside 1..RTPE_MAX_CAPACITY */
    RTPE_ERR_THREAD,              /* the clock thread did not start */
    RTPE_ERR_IDLE,                /* the channel was not started */
    RTPE_ERR_CODEC,               /* an unknown codec, or its coder would not start */
    RTPE_ERR_SRTP,                /* libsrtp refused the keys */
    RTPE_ERR_BUSY,                /* DTMF is being sent already, or bad digits */
};

/* What a call's SDP negotiation left for its media (rtpe_start). */
typedef struct {
    int codec;                    /* RTPE_PCMU, RTPE_PCMA, RTPE_G722, RTPE_OPUS (codec.h) */
    int pt;                       /* the payload type we send and decode */
    int event_pt;                 /* telephone-event's payload type; -1: none negotiated */
    const uint8_t *srtp_tx_key;   /* RTPE_SRTP_KEY_LEN bytes: ours; NULL: plain RTP */
    const uint8_t *srtp_rx_key;   /* the far end's; set with srtp_tx_key */
    int rtcp;                     /* 0: no RTCP; 1: to rtcp_remote from the channel's RTCP socket; 2: muxed on RTP */
    struct sockaddr_in rtcp_remote;
    int stereo;                   /* tape: caller left, far end right; 0: one mixed track */
} rtpe_media;

/* A recording encoded for one codec (rtpe_encode_clip): the caller keeps it valid while it plays. */
typedef struct {
    const uint8_t *bytes;         /* the frames back to back */
    const uint32_t *offsets;      /* frame k starts at bytes + offsets[k] */
    const uint16_t *sizes;
    const int16_t *pcm;           /* what the tape shows of it: RTPE_FRAME_SAMPLES a frame */
    size_t frames;
} rtpe_clip;

/* A DTMF event the far end sent (RFC 4733). */
typedef struct {
    char digit;
    int64_t at_ns;                /* its first packet's arrival, monotonic */
    double duration_ms;           /* as its last packet said */
} rtpe_dtmf_event;

typedef struct rtpe_chan rtpe_chan;  /* one call's socket, RTP state and tape: engine.c's own */

/* An engine. Zeroed before rtpe_init (a binding may embed it); its fields are the engine's,
 * a caller reads only `capacity`. */
typedef struct {
    pthread_t thread;
    pthread_mutex_t lock;
    int thread_started;
    volatile int stop;
    int capacity;
    int loud_level;
    rtpe_chan *ch;
    int64_t ticks;                /* ticks run since the engine started */
    int64_t next_tick_ns;         /* when tick `ticks` is scheduled (monotonic ns) */
    /* health since the last rtpe_health_take() */
    int64_t late_max_ns, busy_ns, busy_max_ns, skipped, n_ticks;
} rtpe_engine;

/* A channel's RTP statistics at close. */
typedef struct {
    unsigned long long rx_packets, rx_other_pt, tx_packets, tx_errors, late_samples;
    long long rx_lost;
    double rx_jitter_ms_mean, rx_jitter_ms_max;
    double rx_delay_ms_max;       /* the most a packet was taped ahead of its arrival */
    unsigned rx_sources;          /* SSRCs the far end sent from, one after the other */
    unsigned moves;               /* times rtpe_set_remote moved the channel */
    unsigned long long rx_cn, rx_dtmf, rx_foreign, rx_auth_failed, rtcp_tx, rtcp_rx;
    double rtt_ms_mean, rtt_ms_max;    /* from the far end's reports; < 0: none measured */
    long long far_lost;                /* the far end's last report on our stream; < 0: none */
    double far_jitter_ms;
    int n_dtmf;
    rtpe_dtmf_event dtmf[RTPE_MAX_DTMF_RX];
} rtpe_stats;

/* The clock's lateness and load since the previous rtpe_health_take(). */
typedef struct {
    double late_max_ms, busy_mean_ms, busy_max_ms;
    long long skipped_ticks, ticks;
    int running;                  /* channels started and not closed */
} rtpe_health;

/* Once per process, before anything else: fills the µ-law decode table. */
void rtpe_tables_init(void);

/* Start the engine's clock thread for up to `capacity` channels. `loud_level` (0..127, pjmedia's
 * bridge scale) is the level from which the far end counts as loud (rtpe_last_loud_ns). */
int rtpe_init(rtpe_engine *e, int capacity, int loud_level);

/* Stop the clock thread and close every channel (tapes completed). Idempotent. */
void rtpe_stop(rtpe_engine *e);

/* After rtpe_stop: channel `i`'s play owner (see rtpe_play), which the channel forgets; NULL if none. */
void *rtpe_take_play(rtpe_engine *e, int i);

/* Free what rtpe_init allocated, after rtpe_stop. */
void rtpe_free(rtpe_engine *e);

/* `host` (dotted IPv4) and `port` as a socket address: RTPE_OK or RTPE_ERR_ADDR. */
int rtpe_ipv4(const char *host, int port, struct sockaddr_in *out);

/* [locks] A channel with two UDP sockets bound to `local` (port 0: free ones), RTP and RTCP;
 * nothing is sent until rtpe_start. Sets *channel, *port and *rtcp_port. */
int rtpe_open(rtpe_engine *e, const struct sockaddr_in *local, int *channel, int *port, int *rtcp_port);

/* [locks] Start channel `i` sending `media` to `remote` from the next tick on, taping the call to a
 * WAV file at `tape_path` (NULL: no tape). Sets *t0 to the tape's sample 0, monotonic seconds. */
int rtpe_start(rtpe_engine *e, int i, const struct sockaddr_in *remote, const char *tape_path,
               uint32_t ssrc, const rtpe_media *media, double *t0);

/* [locks] Play `clip` (encoded for the channel's codec; NULL: silence) on channel `i` from the next
 * tick on, replacing what it played; sets *first to when its first frame is due (monotonic s).
 * `owner` is the caller's handle on the clip's memory, which must stay valid until the channel
 * gives the owner back: *old_owner is the previous one's, now unused. */
int rtpe_play(rtpe_engine *e, int i, const rtpe_clip *clip, void *owner, void **old_owner, double *first);

/* [locks] Send `digits` (0-9 * # A-D) as RFC 4733 events on channel `i` from the next tick on, each
 * `duration_ms` long (rounded up to 20 ms) then `gap_ms` of audio (at least 40 ms: the end packet
 * is sent three times); the audio playing pauses meanwhile. Sets *start and *end (monotonic s):
 * when the first event packet and the last digit's end packet go out (the end bit arrives with
 * the packet that covers the digit's last 20 ms, so a receiver knows the digit ended then). RTPE_ERR_BUSY: digits already queued, bad
 * digits, or no telephone-event negotiated. */
int rtpe_dtmf(rtpe_engine *e, int i, const char *digits, int duration_ms, int gap_ms, int volume,
              double *start, double *end);

/* [locks] Follow the far end of started channel `i` after a re-negotiation (a 200 OK whose SDP
 * differs from the 183's, a re-INVITE or UPDATE): send to `remote` from the next tick on (NULL:
 * where it sends now), or send nothing while `sending` is 0 (the far end holds the call). A new
 * address first reads what arrived by the old path, drops a connect() to the old address (the
 * socket keeps its port) and the
 * received stream's anchor. Sets *moved to 1 when the address changed. */
int rtpe_set_remote(rtpe_engine *e, int i, const struct sockaddr_in *remote, int sending, int *moved);

/* [locks] Read what arrived, complete the tape and close channel `i`; its stats go to *stats and
 * its play owner, now unused, to *old_owner. */
int rtpe_close(rtpe_engine *e, int i, rtpe_stats *stats, void **old_owner);

/* [locks] The clock's health since the previous call (which it resets). */
void rtpe_health_take(rtpe_engine *e, rtpe_health *out);

/* When (monotonic ns) the far end of channel `i` (0 <= i < capacity) was last at least loud_level;
 * 0 if never. Lock-free: one aligned 64-bit read. */
int64_t rtpe_last_loud_ns(const rtpe_engine *e, int i);

/* The engine's clock (CLOCK_MONOTONIC), in seconds. */
double rtpe_monotonic(void);

/* `n` 16-bit samples → `n` G.711 µ-law bytes, the engine's own coder (thread-safe, lock-free). */
void rtpe_encode_pcmu(const int16_t *samples, size_t n, uint8_t *out);

/* Once per process (after rtpe_tables_init): libsrtp's own initialisation. RTPE_OK or RTPE_ERR_SRTP. */
int rtpe_srtp_init(void);

#endif
