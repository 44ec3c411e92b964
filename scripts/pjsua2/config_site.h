/* voiceload's pjproject configuration: a load generator, not a phone.
 *
 * The PyPI pjsua2 wheel is built with 4 calls per process; a load agent wants hundreds.
 * Sizes below are what one agent process may hold; memory per slot is kept small
 * (PJMEDIA_MAX_SDP_MEDIA 4 instead of 16 saves ~120 KB per call slot). */
#define PJSUA_MAX_CALLS                 1024
#define PJSUA_MAX_ACC                   16
#define PJSUA_MAX_PLAYERS               2048
#define PJSUA_MAX_RECORDERS             2048
#define PJSUA_MAX_CONF_PORTS            (3 * PJSUA_MAX_CALLS)
#define PJ_IOQUEUE_MAX_HANDLES          4096
#define PJSIP_MAX_TSX_COUNT             65535
#define PJSIP_MAX_DIALOG_COUNT          65535
#define PJMEDIA_MAX_SDP_MEDIA           4
#define PJMEDIA_HAS_VIDEO               0
/* SRTP (SDES) through Debian's libsrtp2 (--with-external-srtp). libsrtp2 is one library per
 * process, shared with the agents' RTP engine, and its srtp_init() is not idempotent (a second call
 * fails on its debug module) and srtp_shutdown() would end the engine's sessions: the engine module
 * (voiceload/media/module.c) initialises it once at import, and pjmedia neither inits nor shuts it down. */
#define PJMEDIA_HAS_SRTP                1
#define PJMEDIA_LIBSRTP_AUTO_INIT_DEINIT 0
/* Opus at the bridge's 8 kHz: the bot's bridge and the agents' tapes run at 8 kHz, so a wider band would
 * only be resampled away (at a cost per call); the SDP then says maxplaybackrate=8000 */
#define PJMEDIA_CODEC_OPUS_DEFAULT_SAMPLE_RATE 8000
