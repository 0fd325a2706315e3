# trading-order-management: one image, one role per container (tom worker | consume | api).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app

COPY pyproject.toml README.md constraints.txt ./
COPY config ./config
COPY oms ./oms
COPY activities ./activities
COPY workflows ./workflows
COPY workers ./workers
COPY storage ./storage
COPY messaging ./messaging
COPY analytics ./analytics
COPY emulator ./emulator
COPY bench ./bench
# The pinned, tested set of every dependency (python3 bootstrap.py lock updates it).
RUN pip install -c constraints.txt . && useradd --create-home --uid 10001 tom && mkdir -p /app/data && chown tom /app/data

# The worker version (temporal.build_id) is the image's: build with --build-arg TOM_BUILD_ID=<git sha>
# (without it, a worker with temporal.deployment_name refuses to start, naming the key).
ARG TOM_BUILD_ID=
ENV TOM_BUILD_ID=${TOM_BUILD_ID}

USER tom
EXPOSE 8004
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:8004/healthz', timeout=2)" || exit 1
ENTRYPOINT ["tom"]
CMD ["worker"]
