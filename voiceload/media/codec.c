/*
 * The engine's codecs (codec.h says what and why). G.711 is a table lookup each way, the classic
 * segment coders of ITU-T G.711 (the same as pjmedia's, which the reference bot uses: the two
 * sides of a PCMU or PCMA call quantise alike). G.722 is spandsp's, Opus is libopus's.
 */
#include "codec.h"

#include <opus/opus.h>
#include <spandsp.h>
#include <stdlib.h>
#include <string.h>

#define OPUS_BITRATE 24000  /* a VoIP setting: what a gateway's default Opus asks of a narrowband voice */
/* Frames of silence an encoder (and the decoder of what it wrote) runs through before a clip. The
 * engine sends a stateful codec's silence as one frame repeated, the frame such a primed encoder
 * makes of silence: a far end's decoder that has heard it for a while is then in the state the
 * clip's encoder starts from, so an utterance decodes as if it had been encoded live. Unprimed, a
 * G.722 decoder fed one fresh-state frame over and over drifts (a DC offset of ~160, measured) and
 * the clip after it decodes distorted (correlation 0.69 with the recording, 0.9998 primed). */
#define PRIME_G722 100
#define PRIME_OPUS 10

struct rtpe_decoder {
    int codec;
    g722_decode_state_t *g722;
    OpusDecoder *opus;
};

static int16_t ulaw_to_lin_table[256], alaw_to_lin_table[256];

/* µ-law encoding of one 16-bit sample (the classic segment search), as pjmedia does it. */
uint8_t rtpe_lin_to_ulaw(int pcm) {
    static const int seg_end[8] = {0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF, 0x1FFF};
    int mask, seg;
    pcm >>= 2;
    if (pcm < 0) { pcm = -pcm; mask = 0x7F; } else { mask = 0xFF; }
    if (pcm > 8159) pcm = 8159;
    pcm += 0x84 >> 2;
    for (seg = 0; seg < 8 && pcm > seg_end[seg]; seg++) {}
    if (seg >= 8) return (uint8_t)(0x7F ^ mask);
    return (uint8_t)(((seg << 4) | ((pcm >> (seg + 1)) & 0xF)) ^ mask);
}

/* A-law encoding of one 16-bit sample (13-bit magnitude, even bits inverted on the wire). */
static uint8_t lin_to_alaw(int pcm) {
    static const int seg_end[8] = {0x1F, 0x3F, 0x7F, 0xFF, 0x1FF, 0x3FF, 0x7FF, 0xFFF};
    int mask, seg;
    pcm >>= 3;
    if (pcm >= 0) { mask = 0xD5; } else { mask = 0x55; pcm = -pcm - 1; }
    for (seg = 0; seg < 8 && pcm > seg_end[seg]; seg++) {}
    if (seg >= 8) return (uint8_t)(0x7F ^ mask);
    int a = seg << 4;
    a |= seg < 2 ? (pcm >> 1) & 0xF : (pcm >> seg) & 0xF;
    return (uint8_t)(a ^ mask);
}

static int16_t alaw_to_lin(uint8_t a) {
    a ^= 0x55;
    int t = (a & 0x0F) << 4;
    int seg = (a & 0x70) >> 4;
    if (seg == 0) t += 8;
    else { t += 0x108; if (seg > 1) t <<= seg - 1; }
    return (int16_t)((a & 0x80) ? t : -t);
}

void rtpe_codec_tables_init(void) {
    for (int i = 0; i < 256; i++) {
        int u = ~i & 0xFF;
        int t = ((u & 0x0F) << 3) + 0x84;
        t <<= (u & 0x70) >> 4;
        ulaw_to_lin_table[i] = (int16_t)((u & 0x80) ? (0x84 - t) : (t - 0x84));
        alaw_to_lin_table[i] = alaw_to_lin((uint8_t)i);
    }
}

int16_t rtpe_ulaw_to_lin(uint8_t u) { return ulaw_to_lin_table[u]; }

int rtpe_codec_rtp_rate(int codec) { return codec == RTPE_OPUS ? 48000 : 8000; }

int rtpe_codec_delay(int codec) { return codec == RTPE_OPUS ? RTPE_TAPE_RATE / 400 + RTPE_TAPE_RATE / 250 : 0; }

rtpe_decoder *rtpe_decoder_new(int codec, int *ok) {
    *ok = 1;
    if (codec != RTPE_G722 && codec != RTPE_OPUS) return NULL;
    rtpe_decoder *d = calloc(1, sizeof *d);
    if (d == NULL) { *ok = 0; return NULL; }
    d->codec = codec;
    int err = OPUS_OK;
    if (codec == RTPE_G722) d->g722 = g722_decode_init(NULL, 64000, G722_SAMPLE_RATE_8000);
    else d->opus = opus_decoder_create(RTPE_TAPE_RATE, 1, &err);
    if ((codec == RTPE_G722 && d->g722 == NULL) || (codec == RTPE_OPUS && (d->opus == NULL || err != OPUS_OK))) {
        rtpe_decoder_free(d);
        *ok = 0;
        return NULL;
    }
    return d;
}

void rtpe_decoder_free(rtpe_decoder *d) {
    if (d == NULL) return;
    if (d->g722) g722_decode_free(d->g722);
    if (d->opus) opus_decoder_destroy(d->opus);
    free(d);
}

int rtpe_decode(int codec, rtpe_decoder *d, const uint8_t *payload, int len, int16_t *out, int max) {
    switch (codec) {
    case RTPE_PCMU:
    case RTPE_PCMA: {
        const int16_t *table = codec == RTPE_PCMU ? ulaw_to_lin_table : alaw_to_lin_table;
        int n = len < max ? len : max;
        for (int i = 0; i < n; i++) out[i] = table[payload[i]];
        return n;
    }
    case RTPE_G722:
        /* 8 bits a 16 kHz sample pair: len bytes -> len samples at 8 kHz */
        if (d == NULL || len > max) return -1;
        return g722_decode(d->g722, out, payload, len);
    case RTPE_OPUS:
        if (d == NULL) return -1;
        return opus_decode(d->opus, payload, len, out, max, 0);
    default:
        return -1;
    }
}

static long encode_g711(int codec, const int16_t *frame, uint8_t *out) {
    for (int i = 0; i < RTPE_FRAME_8K; i++)
        out[i] = codec == RTPE_PCMU ? rtpe_lin_to_ulaw(frame[i]) : lin_to_alaw(frame[i]);
    return RTPE_FRAME_8K;
}

long rtpe_encode_clip(int codec, const int16_t *pcm, size_t n, size_t frames, uint8_t *out, size_t cap,
                      uint32_t *offsets, uint16_t *sizes, int16_t *decoded) {
    if (n > frames * RTPE_FRAME_8K) return -1;
    g722_encode_state_t *g722 = NULL;
    OpusEncoder *opus = NULL;
    rtpe_decoder *dec = NULL;
    int ok = 1, err = OPUS_OK;
    if (codec == RTPE_G722) g722 = g722_encode_init(NULL, 64000, G722_SAMPLE_RATE_8000);
    if (codec == RTPE_OPUS) {
        opus = opus_encoder_create(RTPE_TAPE_RATE, 1, OPUS_APPLICATION_VOIP, &err);
        if (opus) {
            opus_encoder_ctl(opus, OPUS_SET_BITRATE(OPUS_BITRATE));
            opus_encoder_ctl(opus, OPUS_SET_COMPLEXITY(10));  /* once per recording, off the clock */
            opus_encoder_ctl(opus, OPUS_SET_DTX(0));
        }
    }
    dec = rtpe_decoder_new(codec, &ok);
    long used = -1;
    if (!ok || (codec == RTPE_G722 && g722 == NULL) || (codec == RTPE_OPUS && opus == NULL)) goto done;
    int prime = codec == RTPE_G722 ? PRIME_G722 : codec == RTPE_OPUS ? PRIME_OPUS : 0;
    for (int k = 0; k < prime; k++) {
        int16_t zeros[RTPE_FRAME_8K] = {0}, scratch[RTPE_FRAME_8K * 6];
        uint8_t bytes[RTPE_MAX_FRAME_BYTES];
        long size = codec == RTPE_G722 ? g722_encode(g722, bytes, zeros, RTPE_FRAME_8K)
                                       : opus_encode(opus, zeros, RTPE_FRAME_8K, bytes, RTPE_MAX_FRAME_BYTES);
        if (size <= 0 || rtpe_decode(codec, dec, bytes, (int)size, scratch, RTPE_FRAME_8K * 6) < 0) goto done;
    }
    size_t pos = 0;
    for (size_t k = 0; k < frames; k++) {
        int16_t frame[RTPE_FRAME_8K];
        size_t have = n > k * RTPE_FRAME_8K ? n - k * RTPE_FRAME_8K : 0;
        if (have > RTPE_FRAME_8K) have = RTPE_FRAME_8K;
        memcpy(frame, pcm + k * RTPE_FRAME_8K, have * sizeof(int16_t));
        memset(frame + have, 0, (RTPE_FRAME_8K - have) * sizeof(int16_t));
        if (cap - pos < RTPE_MAX_FRAME_BYTES) goto done;
        long size;
        if (codec == RTPE_PCMU || codec == RTPE_PCMA) size = encode_g711(codec, frame, out + pos);
        else if (codec == RTPE_G722) size = g722_encode(g722, out + pos, frame, RTPE_FRAME_8K);
        else if (codec == RTPE_OPUS) size = opus_encode(opus, frame, RTPE_FRAME_8K, out + pos, RTPE_MAX_FRAME_BYTES);
        else goto done;
        if (size <= 0) goto done;
        offsets[k] = (uint32_t)pos;
        sizes[k] = (uint16_t)size;
        int got = rtpe_decode(codec, dec, out + pos, (int)size, decoded + k * RTPE_FRAME_8K, RTPE_FRAME_8K);
        if (got < 0) goto done;
        if (got < RTPE_FRAME_8K) memset(decoded + k * RTPE_FRAME_8K + got, 0, (size_t)(RTPE_FRAME_8K - got) * 2);
        pos += (size_t)size;
    }
    used = (long)pos;
done:
    if (g722) g722_encode_free(g722);
    if (opus) opus_encoder_destroy(opus);
    rtpe_decoder_free(dec);
    return used;
}
