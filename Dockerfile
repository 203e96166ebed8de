# Luna voice: the service plus Debian's Chromium. The image runs the same set-up step as ./dev and CI.
# One image, two roles: `luna-voice serve` (all-in-one, or the dispatcher with LUNA_BOT_HOST=fly) and
# `luna-voice bot` (one stay on a Fly Machine the dispatcher started).
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LUNA_HOST=0.0.0.0 LUNA_PORT=8080 DEBIAN_FRONTEND=noninteractive \
    PATH=/app/.venv/bin:$PATH
WORKDIR /app
COPY pyproject.toml README.md dev ./
COPY scripts ./scripts
COPY src ./src
COPY bot_page ./bot_page
# Installed as root (apt needs it), then owned by root: the service only reads its code, venv and page.
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/* /root/.cache \
    && useradd --create-home --uid 10001 --user-group --shell /usr/sbin/nologin luna
# Not root: Chromium keeps its sandbox (user namespaces work in a Fly Machine's VM); see the README.
USER 10001:10001
EXPOSE 8080
# Chromium needs shared memory; the flags already avoid /dev/shm, and `docker run --shm-size=1g` is still wise.
STOPSIGNAL SIGTERM
CMD ["luna-voice", "serve"]
