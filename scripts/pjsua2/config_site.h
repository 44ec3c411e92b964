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
#define PJMEDIA_HAS_SRTP                0
