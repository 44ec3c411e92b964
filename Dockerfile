# One image for every voiceload role (agent, bot, run). The base is a build argument because
# base images cannot be pulled everywhere: `docker build --build-arg BASE=<local bookworm image> .`
# It must be Debian 12 (bookworm) or compatible: its python3 (3.11) matches the pjsua2 wheel (cp311).
ARG BASE=debian:bookworm-slim
FROM ${BASE}

# python3 + venv for the install; gcc + python3-dev to compile the agents' RTP engine
# (voiceload/media/*.c), with libopus, libsrtp2 and spandsp (G.722) to link it against (their -dev
# packages bring the run-time libraries; libssl3 is what voiceload's own pjsua2 build adds to them);
# espeak-ng + sox for `voiceload recordings make`; libsndfile1 for soundfile.
# Unpinned on purpose: the versions are whatever the base's Debian release ships (security updates included).
# hadolint ignore=DL3008
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-venv python3-dev gcc libc6-dev espeak-ng sox libsndfile1 \
        libopus-dev libsrtp2-dev libspandsp-dev libssl3 \
    && rm -rf /var/lib/apt/lists/*

# The project (scenarios/ and recordings/ included, so `--scenario scenarios/demo.yaml` works from /app).
WORKDIR /app
COPY . /app

# Dependency versions are bounded in pyproject.toml.
RUN python3 -m venv /opt/voiceload \
    && /opt/voiceload/bin/pip install --no-cache-dir /app

# Calls need no privileges: SIP/RTP use unprivileged UDP ports, tapes go to /dev/shm.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin voiceload
USER 10001

ENTRYPOINT ["/opt/voiceload/bin/voiceload"]
CMD ["--help"]
