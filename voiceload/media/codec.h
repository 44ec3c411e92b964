/*
 * The codecs of voiceload's RTP engine (plain C): G.711 µ-law and A-law written here (a table each),
 * G.722 from spandsp, Opus from libopus. The engine's tape and its recordings are 8 kHz, whatever
 * the wire carries: a decoder hands the engine 8 kHz samples (G.722 its lower band, which spandsp
 * decodes at 8 kHz; Opus decodes at 8 kHz itself), and a recording is encoded once, before the
 * call, into 20 ms frames (rtpe_encode_clip). Nothing here locks or allocates per packet.
 */
#ifndef VOICELOAD_MEDIA_CODEC_H
#define VOICELOAD_MEDIA_CODEC_H

#include <stddef.h>
#include <stdint.h>

enum { RTPE_PCMU = 0, RTPE_PCMA, RTPE_G722, RTPE_OPUS, RTPE_NCODECS };

#define RTPE_TAPE_RATE 8000
#define RTPE_FRAME_8K 160          /* tape samples per 20 ms frame */
#define RTPE_MAX_FRAME_BYTES 400   /* the most one encoded 20 ms frame takes (Opus at our bitrate: < 100) */

typedef struct rtpe_decoder rtpe_decoder;  /* a stateful decoder (G.722, Opus); G.711 needs none */

/* Once per process: the G.711 tables. */
void rtpe_codec_tables_init(void);

/* The RTP timestamp clock of `codec` (G.722's is 8000 although it samples at 16 kHz; Opus's 48000). */
int rtpe_codec_rtp_rate(int codec);

/* Tape samples by which `codec`'s decoded audio lags the sender's own timeline: the encoder's
 * lookahead. libopus's (the far end's, at any rate pjmedia's and most gateways') is 6.5 ms for
 * VoIP (Fs/400 + Fs/250), 52 samples at 8 kHz, measured as such on the engine's own loopback; the
 * engine tapes received Opus that much earlier, so a bot's onset sits where its encoder took it. */
int rtpe_codec_delay(int codec);

/* A decoder for `codec` (NULL for G.711, which needs no state; NULL on failure for the others). */
rtpe_decoder *rtpe_decoder_new(int codec, int *ok);
void rtpe_decoder_free(rtpe_decoder *d);

/* One packet's payload -> 8 kHz samples in `out` (at most `max`); the count, or -1 if undecodable. */
int rtpe_decode(int codec, rtpe_decoder *d, const uint8_t *payload, int len, int16_t *out, int max);

/* `n` 8 kHz samples -> `frames` 20 ms frames of `codec` (the last padded with silence; n <= frames * 160),
 * by an encoder that first ran through a second or so of silence (codec.c says why):
 * frame k's bytes go to out + offsets[k], its size to sizes[k]; what a far end decodes of them (8 kHz)
 * goes to `decoded` (frames * 160 samples), so the tape holds what was sent. Returns the bytes used
 * (<= cap), or -1 (an encoder error, or `cap` too small). */
long rtpe_encode_clip(int codec, const int16_t *pcm, size_t n, size_t frames, uint8_t *out, size_t cap,
                      uint32_t *offsets, uint16_t *sizes, int16_t *decoded);

/* G.711 one sample each way (the engine's µ-law level meter and the Python binding use these). */
uint8_t rtpe_lin_to_ulaw(int pcm);
int16_t rtpe_ulaw_to_lin(uint8_t u);

#endif
