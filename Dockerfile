# cordlesion BIDS App image.
#
#   docker build -t cordlesion/cordlesion:$(cat version) --build-arg VERSION=$(cat version) .
#   docker run --rm --read-only --tmpfs /tmp -u "$(id -u):$(id -g)" \
#       -v "$PWD/bids:/data:ro" -v "$PWD/out:/out" cordlesion/cordlesion:0.1.0 /data /out participant
#
# Build arguments:
#   TORCH_INDEX_URL  where the torch wheel comes from. Default: the CPU-only wheels (~200 MB instead of
#                    several GB). CUDA variant: --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128
#                    (any CUDA index that carries torch==TORCH_VERSION), then `docker run --gpus all ... --device cuda`.
#   PIP_INDEX_URL    the package index for everything else (default PyPI), e.g. a site mirror;
#   PIP_EXTRA_INDEX_URL  more indexes, space-separated (default none).
#   EXTRA_CA_CERT    PEM text of extra CA certificates (a TLS-inspecting proxy, a mirror with its own CA):
#                    --build-arg EXTRA_CA_CERT="$(cat site-ca.pem)". Added to the image's CA store, so pip
#                    and the model download at build time trust it.
#   INSTALL_MODELS   1 (default): download and verify the official SCT models at build time, so the image
#                    runs offline. 0: no official models (CI-sized image; run with --demo).
#   MODEL_TASKS      the tasks whose official models are installed.
#   VERSION          only used for the image label; the app reads /version (copied below).
#   BASE_IMAGE       the base image (default python:3.11-slim-bookworm).
# BASE_IMAGE: another Debian-based Python 3.11 image with pip, e.g. a site mirror's copy; the tests
# build on a local stand-in made with mmdebstrap (tests/test_podman.py).
ARG BASE_IMAGE=python:3.11-slim-bookworm
FROM ${BASE_IMAGE}

ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ARG TORCH_VERSION=2.13.0
ARG PIP_INDEX_URL=https://pypi.org/simple
ARG PIP_EXTRA_INDEX_URL=""
ARG EXTRA_CA_CERT=""
ARG INSTALL_MODELS=1
ARG MODEL_TASKS="lesion_ms lesion_ms_mp2rage spinalcord"
ARG VERSION=unknown

LABEL org.opencontainers.image.title="cordlesion" \
      org.opencontainers.image.description="BIDS App: MS spinal cord lesion segmentation with the SCT lesion models" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"

# Every cache a library might create goes under /tmp (a tmpfs with `docker run --read-only --tmpfs /tmp`;
# the host /tmp under Apptainer): HOME is read-only, and may not even belong to the running UID.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/cordlesion \
    CORDLESION_MODELS=/opt/cordlesion/models \
    CORDLESION_CONTAINER_TAG=cordlesion/cordlesion:${VERSION} \
    XDG_CACHE_HOME=/tmp/.cache \
    MPLCONFIGDIR=/tmp/.cache/matplotlib \
    NUMBA_CACHE_DIR=/tmp/.cache/numba \
    TORCH_HOME=/tmp/.cache/torch \
    TRITON_CACHE_DIR=/tmp/.cache/triton \
    CUDA_CACHE_PATH=/tmp/.cache/nv \
    DENO_DIR=/tmp/.cache/deno

# The site's CA certificates, if any, before anything is downloaded (one file per certificate, as
# update-ca-certificates wants). POSIX sh throughout: podman's default OCI format ignores SHELL.
RUN if [ -n "${EXTRA_CA_CERT}" ]; then \
        printf '%s\n' "${EXTRA_CA_CERT}" > /tmp/extra-ca.pem \
        && awk '/BEGIN CERTIFICATE/ { n++ } n { print > \
            ("/usr/local/share/ca-certificates/cordlesion-extra-" n ".crt") }' /tmp/extra-ca.pem \
        && rm /tmp/extra-ca.pem && update-ca-certificates; \
    fi

# Torch first, from the chosen wheel index (with what it needs, e.g. the CUDA libraries of a CUDA build;
# the rest as pinned by the lock): the lock pins torch==2.13.0, which the local-version wheel
# (2.13.0+cpu) satisfies, so the next step keeps it instead of pulling the multi-GB CUDA build. Then, as
# in the Makefile, the whole locked tree (exactly that: --no-deps), and below the app without deps.
COPY requirements.lock /tmp/src/requirements.lock
RUN if [ -n "${EXTRA_CA_CERT}" ]; then export PIP_CERT=/etc/ssl/certs/ca-certificates.crt; fi \
    && pip install --index-url "${TORCH_INDEX_URL}" --extra-index-url "${PIP_INDEX_URL}" \
        -c /tmp/src/requirements.lock "torch==${TORCH_VERSION}" \
    && pip install --no-deps -r /tmp/src/requirements.lock
COPY . /tmp/src
RUN pip install --no-deps /tmp/src \
    && install -d -m 755 /opt/cordlesion \
    && install -m 755 /tmp/src/run.py /opt/cordlesion/run.py \
    && rm -rf /tmp/src \
    && python -c "import bidsapp.cli"

# Official models into a fixed, world-readable folder (CORDLESION_MODELS), checked after download.
RUN install -d -m 755 "${CORDLESION_MODELS}" \
    && if [ "${INSTALL_MODELS}" = "1" ]; then \
           python -m bidsapp.models install ${MODEL_TASKS} \
           && python -m bidsapp.models verify ${MODEL_TASKS}; \
       fi \
    && chmod -R a+rX "${CORDLESION_MODELS}"

COPY version /version

# A non-root default user; `-u $(id -u)` with any other UID works too, since nothing is written to HOME.
RUN useradd --uid 1000 --user-group --create-home --home-dir /home/cordlesion \
        --shell /usr/sbin/nologin cordlesion \
    && chmod 755 /home/cordlesion
USER 1000:1000
WORKDIR /tmp

ENTRYPOINT ["python", "/opt/cordlesion/run.py"]
CMD ["--help"]
