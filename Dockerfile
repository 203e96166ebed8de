# Luna voice: the service plus Debian's Chromium. The image runs the same set-up step as ./dev and CI.
FROM python:3.11-slim-bookworm

ENV PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 LUNA_HOST=0.0.0.0 LUNA_PORT=8080 DEBIAN_FRONTEND=noninteractive
WORKDIR /app
COPY pyproject.toml README.md dev ./
COPY scripts ./scripts
COPY src ./src
COPY bot_page ./bot_page
RUN bash scripts/setup.sh && rm -rf /var/lib/apt/lists/* /root/.cache
EXPOSE 8080
# Chromium needs shared memory; the flags already avoid /dev/shm, and `docker run --shm-size=1g` is still wise.
STOPSIGNAL SIGTERM
CMD [".venv/bin/luna-voice", "serve"]
